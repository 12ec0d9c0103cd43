import { test, expect } from './fixtures';
import { Page } from '@playwright/test';
import { PulseServer } from './server';

// A fast ticker and a short retry hint keep the tests quick; they still only
// wait on conditions.
const ENV = { PULSE_FEED_INTERVAL: '100ms', PULSE_SSE_RETRY: '300ms' };

let server: PulseServer;

test.beforeEach(async () => {
  server = await PulseServer.start(ENV);
});

test.afterEach(async () => {
  await server.dispose();
});

const badge = (page: Page) => page.getByTestId('feed-status');
const rows = (page: Page) => page.locator('[data-testid=events] li');
const newestId = async (page: Page) => Number(await rows(page).first().getAttribute('data-id'));

test('the server-rendered page already lists the latest events', async ({ browser }) => {
  // Without JavaScript: only what the server rendered.
  const context = await browser.newContext({ javaScriptEnabled: false });
  const page = await context.newPage();
  await expect.poll(async () => {
    await page.goto(server.url);
    return rows(page).count();
  }).toBeGreaterThan(0);
  await expect(badge(page)).toHaveText('Connecting…');
  await context.close();
});

test('events stream in after hydration: at most 10 rows, 3 decimals, badge Live', async ({ page }) => {
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(server.url);
  // The server renders "Connecting"; only the hydrated client can say "Live".
  await expect(badge(page)).toHaveText('Live');

  // New events keep arriving at the top…
  const first = await newestId(page);
  await expect.poll(() => newestId(page)).toBeGreaterThan(first + 5);
  // …and the list never grows past 10.
  await expect(rows(page)).toHaveCount(10);
  for (let i = 0; i < 5; i++) {
    const seen = await newestId(page);
    await expect.poll(() => newestId(page)).toBeGreaterThan(seen);
    expect(await rows(page).count()).toBeLessThanOrEqual(10);
  }

  const values = await page.locator('.event-update .event-value').allTextContents();
  expect(values.length).toBeGreaterThan(0);
  for (const v of values) expect(v).toMatch(/^0\.\d{3}$/);
  // Local times, once hydrated.
  await expect(rows(page).first().locator('time')).toHaveText(/^\d{2}:\d{2}:\d{2}$/);
  // The sparkline has points.
  await expect(page.locator('svg.sparkline polyline')).toHaveAttribute('points', /\d+(\.\d+)?,\d+/);
  expect(errors).toEqual([]);
});

test('the badge leaves Live when the server stops, and the feed resumes from the last id after a restart', async ({ page }) => {
  // Where each feed request asked to resume from: the Last-Event-ID header the
  // browser adds on its own reconnects (only `allHeaders()` shows it), else
  // the query our client sets on a fresh EventSource.
  const resumedFrom: string[] = [];
  page.on('request', async (req) => {
    if (req.url().includes('/api/events')) {
      const header = (await req.allHeaders())['last-event-id'];
      const query = new URL(req.url()).searchParams.get('lastEventId');
      resumedFrom.push(header ?? query ?? '');
    }
  });
  await page.goto(server.url);
  await expect(badge(page)).toHaveText('Live');
  await expect.poll(() => rows(page).count()).toBeGreaterThan(3);

  await server.stop();
  await expect(badge(page)).not.toHaveText('Live');
  await expect(badge(page)).toHaveText(/Reconnecting|Offline/);
  const lastSeen = await newestId(page);
  const requestsBefore = resumedFrom.length;

  await server.launch();
  await expect(badge(page)).toHaveText('Live', { timeout: 20_000 });
  // The reconnection said where the page had got to (request events reach the
  // test asynchronously, so wait for it)…
  await expect.poll(() => resumedFrom.slice(requestsBefore)).toContain(String(lastSeen));
  // …and new events follow it (the restarted server's backlog cannot hold the
  // old events, so a gap notice may come first).
  await expect.poll(() => newestId(page)).toBeGreaterThan(lastSeen);
});

test('the page works at 360 px wide and says its state in text', async ({ page }) => {
  await page.setViewportSize({ width: 360, height: 740 });
  await page.goto(server.url);
  await expect(badge(page)).toHaveText('Live');
  await expect.poll(() => rows(page).count()).toBeGreaterThan(2);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  expect(overflow).toBeLessThanOrEqual(0);
  await expect(page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Feed' })).toBeVisible();
});
