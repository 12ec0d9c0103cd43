import { test, expect } from './fixtures';
import { Page, BrowserContext } from '@playwright/test';
import { PulseServer } from './server';
import { input, members, messages, notice, own, say, send, signIn as signInAt, status } from './chat';

// A fixed secret, so that sessions survive the restarts below.
const ENV = { PULSE_JWT_SECRET: 'an end-to-end secret that is long enough!' };

let server: PulseServer;

test.beforeEach(async () => {
  server = await PulseServer.start(ENV);
});

test.afterEach(async () => {
  await server.dispose();
});

/** Opens `path` on the server and signs in as `name` (or the suggested name). */
const signIn = (page: Page, path: string, name?: string) => signInAt(page, server.url + path, name);

test('chat: sign in, send with Enter, see user, text and local time', async ({ page }) => {
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(e.message));
  const me = await signIn(page, '/chat');
  await say(page, 'hello, pulse');
  const last = messages(page).last();
  await expect(last.locator('.msg-user')).toHaveText(me);
  await expect(last.locator('.msg-text')).toHaveText('hello, pulse');
  await expect(last.locator('time')).toHaveText(/^\d{2}:\d{2}:\d{2}$/);
  // The cookie is HttpOnly: scripts cannot read the token.
  expect(await page.evaluate(() => document.cookie)).not.toContain('pulse_session');
  // A reload keeps the session.
  await page.reload();
  await expect(status(page)).toHaveText('Live');
  await expect(messages(page).last().locator('.msg-text')).toHaveText('hello, pulse');
  expect(errors).toEqual([]);
});

test('chat: message text is shown as text, never as HTML', async ({ page }) => {
  await signIn(page, '/chat');
  const evil = '<img src=x onerror="window.pwned=1"><b>bold</b>';
  await say(page, evil);
  await expect(messages(page).last().locator('.msg-text')).toHaveText(evil);
  expect(await page.locator('[data-testid=messages] img, [data-testid=messages] b').count()).toBe(0);
  expect(await page.evaluate(() => (window as any).pwned)).toBeUndefined();
});

test('chat: the composer stays usable while disconnected; reconnects by itself and fills the gap without duplicates', async ({ browser }) => {
  const alice = await (await browser.newContext()).newPage();
  const bob = await (await browser.newContext()).newPage();
  await signIn(alice, '/chat', 'Alice');
  await signIn(bob, '/chat', 'Bob');
  await say(alice, 'before the restart');
  await expect(messages(bob).last().locator('.msg-text')).toHaveText('before the restart');

  await server.stop();
  await expect(status(bob)).toHaveText(/^(Reconnecting in \d+ s|Reconnecting…)$/);
  // What Bob types meanwhile waits, shown as on its way.
  await expect(input(bob)).toBeEnabled();
  await input(bob).fill('typed while away');
  await send(bob).click();
  await expect(own(bob)).toHaveText(/sending…/);

  await server.launch();
  await expect(status(alice)).toHaveText('Live', { timeout: 20_000 });
  await expect(status(bob)).toHaveText('Live', { timeout: 20_000 });
  await expect(own(bob)).toHaveCount(0);
  await expect(messages(alice).last().locator('.msg-text')).toHaveText('typed while away');
  await say(alice, 'after the restart');
  await expect(messages(bob).last().locator('.msg-text')).toHaveText('after the restart');
  // Rejoining fetched the history again; nothing shows twice.
  const texts = await messages(alice).locator('.msg-text').allTextContents();
  expect(new Set(texts).size).toBe(texts.length);
});

test('chat: stays connected across a session renewal', async ({ page }) => {
  test.setTimeout(90_000);
  await server.stop();
  await server.dispose();
  server = await PulseServer.start({ ...ENV, PULSE_SESSION_TTL: '60s' });
  await signIn(page, '/chat');
  // With a 60 s session the client renews half-way through, then reconnects
  // with the new cookie well before the old token's expiry closes it.
  const renewed = page.waitForResponse((r) => r.url().includes('/api/renew_session') && r.ok(), { timeout: 45_000 });
  await renewed;
  await expect(status(page)).toHaveText('Live');
  await say(page, 'still here');
  await expect(messages(page).last().locator('.msg-text')).toHaveText('still here');
});

test('rooms: presence, notices, switching, history and creating a room', async ({ browser }) => {
  const contexts: BrowserContext[] = [await browser.newContext(), await browser.newContext()];
  const ada = await contexts[0].newPage();
  const bob = await contexts[1].newPage();
  await signIn(ada, '/rooms', 'Ada');
  await expect(ada.getByTestId('current-room')).toHaveText('#general');
  await expect(ada.getByTestId('members')).toContainText('Ada');

  await signIn(bob, '/rooms', 'Bob');
  await expect(members(ada)).toHaveText(['Ada', 'Bob']);
  await expect(ada.locator('li.notice').last()).toContainText(notice('Bob', 'joined'));

  // Ada talks in #tech; Bob joins it later and gets the history.
  await ada.getByRole('button', { name: '#tech' }).click();
  await expect(ada.getByTestId('current-room')).toHaveText('#tech');
  await expect(members(bob)).toHaveText(['Bob']);
  await expect(bob.locator('li.notice').last()).toContainText(notice('Ada', 'left'));
  await say(ada, 'tech talk');
  // Messages in #tech never show in #general: Ada comes back to #general and
  // speaks; when that reaches Bob, the #tech message has not.
  await ada.getByRole('button', { name: '#general' }).click();
  await expect(ada.getByTestId('current-room')).toHaveText('#general');
  await say(ada, 'back in general');
  await expect(messages(bob).locator('.msg-text').last()).toHaveText('back in general');
  await expect(messages(bob).locator('.msg-text')).not.toContainText(['tech talk']);
  await ada.getByRole('button', { name: '#tech' }).click();
  await expect(ada.getByTestId('current-room')).toHaveText('#tech');
  await bob.getByRole('button', { name: '#tech' }).click();
  await expect(messages(bob).locator('.msg-text')).toHaveText(['tech talk']);
  await expect(members(bob)).toHaveText(['Ada', 'Bob']);
  await expect(ada.locator('li.notice').last()).toContainText(notice('Bob', 'joined'));

  // A new room, created by joining it.
  await ada.getByTestId('new-room').fill('side-project');
  await ada.getByTestId('new-room').press('Enter');
  await expect(ada.getByTestId('current-room')).toHaveText('#side-project');
  await expect(ada.getByRole('button', { name: '#side-project' })).toBeVisible();
  await expect(members(ada)).toHaveText(['Ada']);
  await ada.getByTestId('new-room').fill('Not Valid!');
  await ada.getByTestId('new-room').press('Enter');
  await expect(ada.getByRole('alert').first()).toContainText('Room names');
  for (const c of contexts) await c.close();
});

test('rooms: two people with one name are told apart by their tags', async ({ browser }) => {
  const contexts: BrowserContext[] = [await browser.newContext(), await browser.newContext()];
  const first = await contexts[0].newPage();
  const second = await contexts[1].newPage();
  await signIn(first, '/rooms', 'Ada');
  await signIn(second, '/rooms', 'Ada');
  await expect(members(first)).toHaveText(['Ada', 'Ada']);
  const tags = await first.locator('[data-testid=members] .user-tag').allTextContents();
  expect(tags).toHaveLength(2);
  expect(tags[0]).toMatch(/^#[0-9a-f]{4}$/);
  expect(tags[0]).not.toEqual(tags[1]);
  // Each sees their own tag beside their name, and it is one of the two.
  const mine = await first.getByTestId('whoami-tag').textContent();
  const theirs = await second.getByTestId('whoami-tag').textContent();
  expect(mine).not.toEqual(theirs);
  expect(tags.sort()).toEqual([mine, theirs].sort());
  // A message shows its author's tag.
  await say(second, 'which Ada?');
  await expect(messages(first).last().locator('.user-tag')).toHaveText(theirs!);
  for (const c of contexts) await c.close();
});

test('sign-in: a name with invisible characters is refused with the reason', async ({ page }) => {
  await page.goto(server.url + '/chat');
  const field = page.getByTestId('sign-in-name');
  await expect(field).toHaveValue(/^User\d{3}$/);
  await field.fill('Ad\u200Ba');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await expect(page.locator('form.sign-in [role=alert]')).toHaveText(
    /^a name may not contain invisible or control characters/,
  );
  await expect(page.getByTestId('whoami')).toHaveCount(0);
});

test('chat pages work at 360 px wide', async ({ page }) => {
  await page.setViewportSize({ width: 360, height: 740 });
  await signIn(page, '/rooms');
  await say(page, 'narrow');
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  expect(overflow).toBeLessThanOrEqual(0);
  await expect(status(page)).toHaveText('Live');
});

test('rooms: the room is in the URL; reload and back keep it, with the rooms one has been in', async ({ page }) => {
  await signIn(page, '/rooms', 'Rhea');
  await page.getByTestId('new-room').fill('lab');
  await page.getByTestId('new-room').press('Enter');
  await expect(page).toHaveURL(/\/rooms\/lab$/);
  await expect(page.getByTestId('current-room')).toHaveText('#lab');
  await page.getByRole('button', { name: '#tech' }).click();
  await expect(page).toHaveURL(/\/rooms\/tech$/);

  await page.reload();
  await expect(status(page)).toHaveText('Live');
  await expect(page.getByTestId('current-room')).toHaveText('#tech');
  await expect(members(page)).toHaveText(['Rhea']);
  await expect(page.getByRole('button', { name: '#lab' })).toBeVisible();

  await page.goBack();
  await expect(page).toHaveURL(/\/rooms\/lab$/);
  await expect(page.getByTestId('current-room')).toHaveText('#lab');
  await expect(members(page)).toHaveText(['Rhea']);
});

test('chat: a reader scrolled up stays put when a message arrives, and is offered the way down', async ({ browser }) => {
  const contexts: BrowserContext[] = [await browser.newContext(), await browser.newContext()];
  const reader = await contexts[0].newPage();
  const writer = await contexts[1].newPage();
  await signIn(reader, '/chat', 'Reader');
  await signIn(writer, '/chat', 'Writer');
  for (let i = 0; i < 40; i++) await say(writer, `line ${i}`);
  await expect(messages(reader)).toHaveCount(40);
  const list = reader.getByTestId('messages');
  const fromBottom = () => list.evaluate((el) => el.scrollHeight - el.scrollTop - el.clientHeight);
  await expect.poll(fromBottom).toBeLessThan(10);

  await list.evaluate((el) => { el.scrollTop = 0; });
  await say(writer, 'newest');
  await expect(messages(reader).last()).toContainText('newest');
  expect(await list.evaluate((el) => el.scrollTop)).toBe(0);
  await expect(reader.getByTestId('new-messages')).toBeVisible();

  await reader.getByTestId('new-messages').click();
  await expect.poll(fromBottom).toBeLessThan(10);
  await expect(reader.getByTestId('new-messages')).toBeHidden();
  for (const c of contexts) await c.close();
});

test('chat: after sign-in the message box has the focus; a refused message is shown with the reason, the box is free', async ({ page }) => {
  await server.dispose();
  server = await PulseServer.start({ ...ENV, PULSE_RATE_LIMIT_PER_MIN: '2' });
  await page.goto(server.url + '/chat');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await expect(status(page)).toHaveText('Live');
  await expect(input(page)).toBeFocused();

  await say(page, 'one');
  await say(page, 'two');
  await input(page).fill('three is too many');
  await input(page).press('Enter');
  // The message is not lost in the box: it waits in the list, saying why.
  await expect(input(page)).toHaveValue('');
  await expect(own(page)).toHaveCount(1);
  await expect(own(page).locator('.msg-text')).toHaveText('three is too many');
  await expect(own(page).getByTestId('own-status')).toContainText('too many messages');
  await expect(messages(page)).toHaveCount(2);
});

test('with WebSockets blocked, chat runs over HTTP with a WebSocket user, and moves back when they pass again', async ({ browser }) => {
  const blockedContext = await browser.newContext();
  const fay = await blockedContext.newPage();
  // A network that does not let WebSockets through (a proxy stripping Upgrade).
  let blocked = true;
  await fay.routeWebSocket(/\/ws$/, (ws) => {
    if (blocked) ws.close();
    else ws.connectToServer();
  });
  const otherContext = await browser.newContext();
  const wes = await otherContext.newPage();

  await signIn(fay, '/chat', 'Fay');
  await expect(fay.getByTestId('chat-transport')).toBeVisible();
  await signIn(wes, '/chat', 'Wes');
  await expect(wes.getByTestId('chat-transport')).toBeHidden();

  await say(fay, 'over http');
  await expect(messages(wes).last().locator('.msg-text')).toHaveText('over http');
  await say(wes, 'over a socket');
  await expect(messages(fay).last().locator('.msg-text')).toHaveText('over a socket');

  // WebSockets pass again: on the next sign of a changed network (here the
  // tab becoming visible) the client moves back to one.
  blocked = false;
  await fay.evaluate(() => document.dispatchEvent(new Event('visibilitychange', { bubbles: true })));
  await expect(fay.getByTestId('chat-transport')).toBeHidden();
  await expect(status(fay)).toHaveText('Live');
  await say(fay, 'back on a socket');
  await expect(messages(wes).last().locator('.msg-text')).toHaveText('back on a socket');
  // Nothing lost or doubled across the switch.
  await expect(messages(fay).locator('.msg-text')).toHaveText(['over http', 'over a socket', 'back on a socket']);
  await expect(messages(wes).locator('.msg-text')).toHaveText(['over http', 'over a socket', 'back on a socket']);
  await blockedContext.close();
  await otherContext.close();
});
