import { test, expect } from './fixtures';
import { Page } from '@playwright/test';
import { PulseServer } from './server';

// Over HTTP/1.1 a browser opens at most six connections to a host; with a
// feed stream per tab, a seventh tab could not even load. The tabs of one
// browser share one stream instead (src/client/events.rs).

let server: PulseServer;

test.beforeEach(async () => {
  server = await PulseServer.start({ PULSE_FEED_INTERVAL: '100ms' });
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

test('ten tabs share one feed stream; closing the tab that holds it keeps the others live without a gap', async ({ browser, context }) => {
  test.setTimeout(90_000);
  const pages: Page[] = [];
  for (let i = 0; i < 10; i++) {
    const page = await context.newPage();
    await page.goto(server.url);
    pages.push(page);
  }
  for (const page of pages) await expect(page.getByTestId('feed-status')).toHaveText('Live');
  await expect.poll(() => server.metric('pulse_feed_subscribers')).toBe(1);

  // A reference: a page of another browser context (its own locks), with a
  // stream of its own. Ids are time-based, not consecutive, so what a tab
  // sees is held against what this one sees.
  const other = await browser.newContext();
  const reference = await other.newPage();
  await reference.goto(server.url);
  await expect(reference.getByTestId('feed-status')).toHaveText('Live');
  await recordIds(reference);

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
  const ids = await seenIds(watcher);
  const [first, last] = [Math.min(...ids), Math.max(...ids)];
  await expect.poll(async () => Math.max(...(await seenIds(reference)))).toBeGreaterThanOrEqual(last);
  const expected = (await seenIds(reference)).filter((id) => id >= first && id <= last);
  expect(new Set(ids).size, 'no event twice').toBe(ids.length);
  expect([...ids].sort((a, b) => a - b), 'no event missing').toEqual([...expected].sort((a, b) => a - b));
  await expect(watcher.locator('[data-testid=events] li.event-gap')).toHaveCount(0);
  // One stream for this browser's tabs, one for the reference's.
  await expect.poll(() => server.metric('pulse_feed_subscribers')).toBe(2);
  await other.close();
});
