import { test, expect } from './fixtures';
import { Browser, BrowserContext, Page } from '@playwright/test';
import { PulseServer } from './server';
import { say, signIn, status, texts } from './chat';

// Over HTTP/1.1 a browser opens at most six connections to a host; with a
// feed stream per tab, a seventh tab could not even load. The tabs of one
// browser share one stream instead (src/client/events.rs).

let server: PulseServer;

test.beforeEach(async () => {
  server = await PulseServer.start({ PULSE_FEED_INTERVAL: '100ms', PULSE_SSE_KEEP_ALIVE: '1s' });
});

test.afterEach(async () => {
  await server.dispose();
});

/** Starts recording the id of every event row the page ever adds. */
async function recordIds(page: Page) {
  await page.evaluate(() => {
    const seen: number[] = [];
    (window as unknown as { seenIds: number[] }).seenIds = seen;
    const list = document.querySelector('[data-testid=events]')!;
    new MutationObserver((changes) => {
      for (const change of changes) {
        for (const node of Array.from(change.addedNodes)) {
          const id = (node as Element).getAttribute?.('data-id');
          if (id) seen.push(Number(id));
        }
      }
    }).observe(list, { childList: true });
  });
}

const seenIds = (page: Page) => page.evaluate(() => (window as unknown as { seenIds: number[] }).seenIds);

/** Opens `n` tabs of the Feed in `context`, one after the other once Live: the first holds the stream. */
async function openFeeds(context: BrowserContext, n: number): Promise<Page[]> {
  const pages: Page[] = [];
  for (let i = 0; i < n; i++) {
    const page = await context.newPage();
    await page.goto(server.url);
    await expect(page.getByTestId('feed-status')).toHaveText('Live');
    pages.push(page);
  }
  return pages;
}

/**
 * A Feed page of another browser context (its own locks), with a stream of
 * its own, recording what it sees. Ids are time-based, not consecutive, so
 * what a tab sees is held against what this one sees.
 */
async function referenceFeed(browser: Browser): Promise<{ page: Page; close: () => Promise<void> }> {
  const other = await browser.newContext();
  const page = await other.newPage();
  await page.goto(server.url);
  await expect(page.getByTestId('feed-status')).toHaveText('Live');
  await recordIds(page);
  return { page, close: () => other.close() };
}

/** `watcher` saw every event `reference` saw in the same span, once each, and no gap. */
async function sawEveryEventOnce(watcher: Page, reference: Page) {
  const all = await seenIds(watcher);
  const last = Math.max(...all);
  await expect.poll(async () => Math.max(...(await seenIds(reference)))).toBeGreaterThanOrEqual(last);
  // From the first event both recorded: the reference's stream may have
  // delivered an event just before its recording began that the watcher
  // (relayed by another tab, a moment later) recorded.
  const first = Math.max(Math.min(...all), Math.min(...(await seenIds(reference))));
  const ids = all.filter((id) => id >= first);
  const expected = (await seenIds(reference)).filter((id) => id >= first && id <= last);
  expect(new Set(all).size, 'no event twice').toBe(all.length);
  expect([...ids].sort((a, b) => a - b), 'no event missing').toEqual([...expected].sort((a, b) => a - b));
  await expect(watcher.locator('[data-testid=events] li.event-gap')).toHaveCount(0);
}

test('ten tabs share one feed stream; closing the tab that holds it keeps the others live without a gap', async ({ browser, context }) => {
  test.setTimeout(90_000);
  const pages = await openFeeds(context, 10);
  await expect.poll(() => server.metric('pulse_feed_subscribers')).toBe(1);
  const reference = await referenceFeed(browser);

  // The first tab asked first, so it holds the stream. It goes.
  const watcher = pages[9];
  await recordIds(watcher);
  await expect.poll(async () => (await seenIds(watcher)).length).toBeGreaterThan(3);
  await pages[0].close();

  // Another tab takes over, from where it had got to: the others stay live
  // and see every event, none twice, none missing.
  for (const page of pages.slice(1)) await expect(page.getByTestId('feed-status')).toHaveText('Live');
  const atClose = Math.max(...(await seenIds(watcher)));
  await expect.poll(async () => Math.max(...(await seenIds(watcher)))).toBeGreaterThan(atClose + 20);
  await sawEveryEventOnce(watcher, reference.page);
  // One stream for this browser's tabs, one for the reference's.
  await expect.poll(() => server.metric('pulse_feed_subscribers')).toBe(2);
  await reference.close();
});

test('a tab that stops running while holding the stream loses it to another tab, and follows again when it wakes', async ({ browser, context }) => {
  test.setTimeout(60_000);
  const pages = await openFeeds(context, 3);
  await expect.poll(() => server.metric('pulse_feed_subscribers')).toBe(1);
  const reference = await referenceFeed(browser);
  const watcher = pages[2];
  await recordIds(watcher);
  await expect.poll(async () => (await seenIds(watcher)).length).toBeGreaterThan(3);

  // The first tab holds the stream, and stops running for 10 s without
  // closing or letting go of its lock: what a frozen background tab does to
  // the others. (Headless Chromium ignores DevTools' freezing, so the tab's
  // one thread is kept busy instead; to the other tabs it is the same.)
  void pages[0].evaluate(() => {
    const end = Date.now() + 10_000;
    while (Date.now() < end) {
      // busy
    }
  });
  const atFreeze = Math.max(...(await seenIds(watcher)));

  // The others hear nothing from it for three heartbeats (3 s), take the
  // lock and carry on from where they were: events keep coming, no gap.
  await expect.poll(() => server.metric('pulse_feed_subscribers'), { timeout: 8_000 }).toBe(3);
  await expect.poll(async () => Math.max(...(await seenIds(watcher)))).toBeGreaterThan(atFreeze + 5);
  await expect(watcher.getByTestId('feed-status')).toHaveText('Live');

  // Woken, it finds its lock taken: it closes its stream and follows the
  // new holder.
  await expect.poll(() => server.metric('pulse_feed_subscribers'), { timeout: 15_000 }).toBe(2);
  await expect(pages[0].getByTestId('feed-status')).toHaveText('Live');
  const woken = await newestRow(pages[0]);
  await expect.poll(() => newestRow(pages[0])).toBeGreaterThan(woken);

  // The watcher saw every event once, and none is missing.
  await sawEveryEventOnce(watcher, reference.page);
  await reference.close();
});

const newestRow = async (page: Page) =>
  Number(await page.locator('[data-testid=events] li').first().getAttribute('data-id'));

test('with WebSockets blocked, eight chat tabs share one fallback stream, and carry on when the tab holding it closes', async ({ context }) => {
  test.setTimeout(90_000);
  await server.dispose();
  server = await PulseServer.start({ PULSE_JWT_SECRET: 'an end-to-end secret that is long enough!', PULSE_WS_PING_INTERVAL: '2s' });
  // A network that lets no WebSocket through.
  await context.routeWebSocket(/\/ws$/, (ws) => ws.close());
  const tabs: Page[] = [];
  const first = await context.newPage();
  await signIn(first, server.url + '/chat', 'Fay');
  tabs.push(first);
  for (let i = 1; i < 8; i++) {
    const page = await context.newPage();
    await page.goto(server.url + '/chat');
    tabs.push(page);
  }
  for (const page of tabs) {
    await expect(status(page)).toHaveText('Live');
    await expect(page.getByTestId('chat-transport')).toBeVisible();
  }
  // One stream for all eight tabs (over HTTP/1.1 a browser would give six
  // streams of one host and leave the other tabs waiting).
  await expect.poll(() => server.metric('pulse_open_connections{transport="sse"}')).toBe(1);
  await say(tabs[7], 'from the last tab');
  for (const page of tabs) await expect(texts(page).last()).toHaveText('from the last tab');

  // The tab holding the stream closes: the others connect again, one of
  // them holding a new stream, and go on talking.
  await tabs[0].close();
  const rest = tabs.slice(1);
  await expect.poll(() => server.metric('pulse_connections_opened_total{transport="sse"}'), { timeout: 20_000 }).toBe(2);
  await expect.poll(() => server.metric('pulse_open_connections{transport="sse"}')).toBe(1);
  for (const page of rest) await expect(status(page)).toHaveText('Live');
  await say(rest[3], 'after the holder left');
  for (const page of rest) await expect(texts(page).last()).toHaveText('after the holder left');
});
