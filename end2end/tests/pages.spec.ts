import { test, expect } from './fixtures';
import { Browser, Locator, Page } from '@playwright/test';
import { PulseServer } from './server';
import { input, send, signIn } from './chat';

// Pages that look finished, on a phone and on a desktop.

const ENV = {
  PULSE_JWT_SECRET: 'an end-to-end secret that is long enough!',
  PULSE_FEED_INTERVAL: '100ms',
};

let server: PulseServer;

test.beforeEach(async () => {
  server = await PulseServer.start(ENV);
});

test.afterEach(async () => {
  await server.dispose();
});

const SIZES = [
  { width: 1280, height: 800 },
  { width: 360, height: 740 },
];

/** Nothing is wider than the window. */
async function noHorizontalOverflow(page: Page) {
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  expect(overflow, 'horizontal overflow (px)').toBeLessThanOrEqual(0);
}

/** The navigation's links are all on one line. */
async function navOnOneLine(page: Page) {
  const tops = await page
    .getByRole('navigation', { name: 'Main' })
    .getByRole('link')
    .evaluateAll((links) => links.map((l) => Math.round(l.getBoundingClientRect().top)));
  expect(tops.length).toBe(4);
  expect(new Set(tops).size, `link tops ${tops}`).toBe(1);
}

/** Opens `path` (signed in) and finds the page whole and its composer on screen, unscrolled. */
async function composerOnScreen(page: Page, path: string) {
  await page.goto(server.url + path);
  await expect(page.getByTestId('chat-status')).toHaveText('Live');
  expect(await page.evaluate(() => window.scrollY)).toBe(0);
  await noHorizontalOverflow(page);
  await navOnOneLine(page);
  await expect(input(page)).toBeInViewport({ ratio: 1 });
  await expect(send(page)).toBeInViewport({ ratio: 1 });
}

for (const size of SIZES) {
  test(`every page at ${size.width}×${size.height}: no overflow, one-line navigation, composer and Go on screen`, async ({ browser }) => {
    const context = await browser.newContext({ viewport: size });
    const page = await context.newPage();
    for (const path of ['/', '/dashboard']) {
      await page.goto(server.url + path);
      await expect(page.locator('[data-testid$=-status]').first()).toHaveText('Live');
      await noHorizontalOverflow(page);
      await navOnOneLine(page);
    }

    // Chat: the message box and its button are on screen as the page opens,
    // without scrolling (the message list scrolls, not the page).
    await signIn(page, server.url + '/chat', 'Ada');
    await composerOnScreen(page, '/chat');
    await input(page).fill('hello');
    await send(page).click();
    await expect(page.locator('[data-testid=messages] li.msg .msg-text')).toHaveText(['hello']);

    // Rooms: the same, and "Go" is clickable (a click, not Enter).
    await composerOnScreen(page, '/rooms');
    await page.getByTestId('new-room').fill('side-project');
    await page.getByRole('button', { name: 'Go' }).click();
    await expect(page.getByTestId('current-room')).toHaveText('#side-project');
    await expect(page).toHaveURL(/\/rooms\/side-project$/);
    await context.close();
  });
}

test('each page has a title of its own', async ({ page }) => {
  const titles: [string, string][] = [
    ['/', 'Live feed · pulse'],
    ['/chat', 'Chat · pulse'],
    ['/rooms/tech', '#tech · Rooms · pulse'],
    ['/dashboard', 'Dashboard · pulse'],
    ['/nowhere', 'Not found · pulse'],
  ];
  for (const [path, title] of titles) {
    await page.goto(server.url + path);
    await expect(page).toHaveTitle(title);
  }
  // Navigating in the page changes it too.
  await page.goto(server.url + '/');
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Dashboard' }).click();
  await expect(page).toHaveTitle('Dashboard · pulse');
});

test('publishing while signed out is answered 401 and offers to sign in', async ({ page }) => {
  await page.goto(server.url);
  await expect(page.getByTestId('feed-status')).toHaveText('Live');
  await page.getByTestId('publish-text').fill('hello');
  const answer = page.waitForResponse((r) => r.url().includes('/api/publish_notification'));
  await page.getByRole('button', { name: 'Publish' }).click();
  expect((await answer).status()).toBe(401);
  const link = page.getByTestId('publish-sign-in');
  await expect(link).toBeVisible();
  await expect(page.locator('.publish [role=alert]')).not.toContainText('error');
  await link.click();
  await expect(page.getByTestId('sign-in-name')).toBeVisible();
});

for (const size of SIZES) {
  test(`at ${size.width}×${size.height} the Feed does not move under the pointer while its first events arrive`, async ({ page }) => {
    await server.dispose();
    // A new server: its feed has few events yet, and one arrives every 300 ms.
    server = await PulseServer.start({ ...ENV, PULSE_FEED_INTERVAL: '300ms' });
    await page.setViewportSize(size);
    await page.goto(server.url);
    const rows = page.locator('[data-testid=events] li');
    const first = await rows.count();
    expect(first, 'rows on the first paint (the list is still filling)').toBeLessThan(10);
    const top = async (name: string) => (await page.getByRole('button', { name }).boundingBox())!.y;
    const before = await top('Publish');
    await expect(rows).toHaveCount(10, { timeout: 10_000 });
    expect(await top('Publish'), 'where "Publish" is once the list is full').toBe(before);
  });
}

async function newPage(browser: Browser): Promise<Page> {
  return (await browser.newContext()).newPage();
}

test('a notification stays on the Feed for later visitors, however busy the ticker', async ({ browser }) => {
  await server.dispose();
  // A ticker fast enough to push the notification out of the 256-event
  // backlog within seconds.
  server = await PulseServer.start({ ...ENV, PULSE_FEED_INTERVAL: '10ms' });
  const ops = await newPage(browser);
  await signIn(ops, server.url + '/chat', 'Ops');
  await ops.goto(server.url);
  await expect(ops.getByTestId('feed-status')).toHaveText('Live');
  await ops.getByTestId('publish-text').fill('deploy at 5');
  await ops.getByRole('button', { name: 'Publish' }).click();
  await expect(ops.getByTestId('publish-text')).toHaveValue('');
  const rowId = async (page: Page) => Number(await page.locator('[data-testid=events] li').first().getAttribute('data-id'));
  const at = await rowId(ops);
  // More than a backlog's worth of events later (ids are ms × 1000 apart
  // at least)…
  await expect.poll(() => rowId(ops), { timeout: 30_000 }).toBeGreaterThan(at + 300 * 10_000);

  // …someone opens the Feed for the first time, and sees it with its author.
  const later = await newPage(browser);
  await later.goto(server.url);
  const note = later.locator('[data-testid=notifications] li').first();
  await expect(note.locator('.note-user')).toHaveText('Ops');
  await expect(note.locator('.note-text')).toHaveText('deploy at 5');
});

test('the feed lists events only, newest first in time order', async ({ page }) => {
  await page.goto(server.url);
  await expect(page.getByTestId('feed-status')).toHaveText('Live');
  await expect(page.locator('[data-testid=events] li')).toHaveCount(10);
  // Reconnect (the connection's state is the badge's, not a row's).
  await server.stop();
  await expect(page.getByTestId('feed-status')).not.toHaveText('Live');
  await server.launch();
  await expect(page.getByTestId('feed-status')).toHaveText('Live', { timeout: 20_000 });
  await expect.poll(() => page.locator('[data-testid=events] li.event-update').count()).toBeGreaterThan(5);
  await expect(page.locator('[data-testid=events] li.event-connected')).toHaveCount(0);
  const ids = (await page.locator('[data-testid=events] li[data-id]').evaluateAll((rows) =>
    rows.map((r) => Number(r.getAttribute('data-id'))),
  )) as number[];
  expect(ids, 'newest first').toEqual([...ids].sort((a, b) => b - a));
  const times = await page.locator('[data-testid=events] li.event-update time').allTextContents();
  expect(times, 'in time order').toEqual([...times].sort().reverse());
});

test('the dashboard charts fill from the left, with a time axis and their values', async ({ page }) => {
  await page.goto(server.url + '/dashboard');
  await expect(page.getByTestId('dashboard-status')).toHaveText('Live');
  const line = page.locator('figure.chart svg polyline').first();
  await expect(line).toHaveAttribute('points', /^0\.0,/);
  await expect(page.getByTestId('chart-start').first()).toHaveText(/^\d{2}:\d{2}:\d{2}$/);
  await expect(page.getByTestId('chart-max').first()).toHaveText(/^\d+(\.\d)?$/);
  await expect(page.locator('.legend-value').first()).toHaveText(/^\d+(\.\d)?$/);
  // "in-process" on one line.
  const broker = page.getByTestId('broker');
  await expect(broker).toHaveText('in-process');
  const lines = await broker.evaluate((el) => Math.round(el.getBoundingClientRect().height / parseFloat(getComputedStyle(el).lineHeight)));
  expect(lines).toBe(1);
});

test('a signed-in user publishes without JavaScript, and what was typed before hydration is kept', async ({ browser }) => {
  // The form is a plain form: without script the browser posts it itself.
  const context = await browser.newContext({ javaScriptEnabled: false });
  const signIn = await context.request.post(server.url + '/api/sign_in', { form: { name: 'Noscript' } });
  expect(signIn.ok()).toBe(true);
  const page = await context.newPage();
  await page.goto(server.url);
  await page.getByTestId('publish-text').fill('posted by the browser itself');
  const posted = page.waitForResponse((r) => r.url().endsWith('/api/publish_notification'));
  await page.getByRole('button', { name: 'Publish' }).click();
  // Taken, and the browser is sent back to the feed.
  expect((await posted).status()).toBe(302);
  await expect(page).toHaveURL(/^http:\/\/[^/]+\/\??$/);

  const reader = await newPage(browser);
  await reader.goto(server.url);
  const note = reader.locator('[data-testid=notifications] li').first();
  await expect(note.locator('.note-user')).toHaveText('Noscript');
  await expect(note.locator('.note-text')).toHaveText('posted by the browser itself');
  await context.close();

  // With script, text typed while the page's code is still on the way
  // survives hydration.
  const typist = await (await browser.newContext()).newPage();
  let release = () => {};
  const held = new Promise<void>((resolve) => (release = resolve));
  await typist.route('**/pkg/pulse.wasm', async (route) => {
    await held;
    await route.continue();
  });
  await typist.goto(server.url, { waitUntil: 'domcontentloaded' });
  await typist.getByTestId('publish-text').fill('typed early');
  release();
  await expect(typist.getByTestId('feed-status')).toHaveText('Live');
  await expect(typist.getByTestId('publish-text')).toHaveValue('typed early');
});

// What a user notices on the pages themselves.

test('switching rooms keeps the page, its socket and the keyboard focus; the URL follows and back/forward work', async ({ page }) => {
  await signIn(page, server.url + '/rooms', 'Ada');
  await expect(page.getByTestId('current-room')).toHaveText('#general');
  const sockets: string[] = [];
  page.on('websocket', (ws) => sockets.push(ws.url()));
  // A reload forgets the marker; a rebuilt page has another badge, and a
  // reconnect shows on it.
  await page.evaluate(() => {
    const w = window as any;
    w.__kept = true;
    w.__badge = document.querySelector('[data-testid=chat-status]');
    w.__states = [];
    new MutationObserver(() => w.__states.push(w.__badge.textContent)).observe(w.__badge, {
      childList: true,
      subtree: true,
      characterData: true,
    });
  });
  const same = () =>
    page.evaluate(() => {
      const w = window as any;
      return {
        kept: w.__kept === true,
        badge: document.querySelector('[data-testid=chat-status]') === w.__badge,
        // Anything the badge said that was not Live.
        states: w.__states.filter((s: string) => !s.includes('Live')),
      };
    });
  const room = (name: string) => page.getByRole('button', { name: `#${name}`, exact: true });

  for (const name of ['tech', 'random']) {
    await room(name).click();
    await expect(page).toHaveURL(new RegExp(`/rooms/${name}$`));
    await expect(page.getByTestId('current-room')).toHaveText(`#${name}`);
    await expect(room(name)).toBeFocused();
    expect(await same()).toEqual({ kept: true, badge: true, states: [] });
  }
  await page.goBack();
  await expect(page.getByTestId('current-room')).toHaveText('#tech');
  await expect(room('tech')).toHaveAttribute('aria-current', 'true');
  await page.goBack();
  await expect(page).toHaveURL(/\/rooms$/);
  await expect(page.getByTestId('current-room')).toHaveText('#general');
  await page.goForward();
  await expect(page.getByTestId('current-room')).toHaveText('#tech');
  // Still the one page on its one socket, Live all along.
  expect(await same()).toEqual({ kept: true, badge: true, states: [] });
  expect(sockets).toEqual([]);
});

test('at 1280×800 Rooms uses the width: a wide conversation and a roomy name box', async ({ browser }) => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  await signIn(page, server.url + '/rooms', 'Ada');
  const width = (testid: string) =>
    page.getByTestId(testid).evaluate((el) => Math.round(el.getBoundingClientRect().width));
  expect(await width('messages'), 'message column (px)').toBeGreaterThanOrEqual(640);
  expect(await width('new-room'), 'room-name box (px)').toBeGreaterThanOrEqual(160);
  const grid = await page.locator('.rooms').evaluate((el) => Math.round(el.getBoundingClientRect().width));
  expect(grid, 'the three columns together (px)').toBeGreaterThanOrEqual(1100);
  await context.close();
});

test('at 360×740 the pages fit: members above the composer, no page scroll, "Sign out" beside the name, the room named, the placeholder whole', async ({ browser }) => {
  const context = await browser.newContext({ viewport: { width: 360, height: 740 } });
  const page = await context.newPage();
  await signIn(page, server.url + '/rooms', 'Ada');
  await expect(page.getByTestId('members').locator('li')).toHaveCount(1);
  await expect(page.getByRole('heading', { name: 'Members' })).toBeInViewport({ ratio: 1 });
  await expect(page.getByTestId('members').locator('li').first()).toBeInViewport({ ratio: 1 });
  await expect(input(page)).toBeInViewport({ ratio: 1 });
  const overflow = await page.evaluate(() => document.documentElement.scrollHeight - window.innerHeight);
  expect(overflow, 'the page scrolls (px)').toBeLessThanOrEqual(0);

  // Chat says which room it is, and "Sign out" shares a line with the name.
  await page.goto(server.url + '/chat');
  await expect(page.getByTestId('chat-status')).toHaveText('Live');
  await expect(page.getByTestId('current-room')).toHaveText('#general');
  const top = (loc: Locator) =>
    loc.evaluate((el) => Math.round(el.getBoundingClientRect().top + el.getBoundingClientRect().height / 2));
  const signOut = page.getByRole('button', { name: 'Sign out' });
  expect(Math.abs((await top(signOut)) - (await top(page.getByTestId('whoami')))), 'Sign out on the name’s line').toBeLessThanOrEqual(4);

  // The feed's notification box shows its whole placeholder.
  await page.goto(server.url + '/');
  const fits = await page.getByTestId('publish-text').evaluate((el: HTMLInputElement) => {
    const style = getComputedStyle(el);
    const canvas = document.createElement('canvas').getContext('2d')!;
    canvas.font = `${style.fontStyle} ${style.fontWeight} ${style.fontSize} ${style.fontFamily}`;
    const room = el.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    return { text: canvas.measureText(el.placeholder).width, room };
  });
  expect(fits.text, `placeholder ${fits.text} px in ${fits.room} px`).toBeLessThanOrEqual(fits.room);
  await context.close();
});

test('the not-found page has the site’s look and a 404', async ({ page }) => {
  const res = await page.goto(server.url + '/no/such/page');
  expect(res?.status()).toBe(404);
  await expect(page).toHaveTitle('Not found · pulse');
  const colors = await page.evaluate(() => ({
    link: getComputedStyle(document.querySelector('main a')!).color,
    accent: getComputedStyle(document.querySelector('.brand')!).color,
  }));
  expect(colors.link).toBe(colors.accent);
});
