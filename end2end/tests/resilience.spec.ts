import { test, expect } from './fixtures';
import { Page } from '@playwright/test';
import { PulseServer } from './server';

// The browser's connections (src/client): when the network goes and comes
// back, they say so and reconnect at once instead of sitting out a backoff.

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

const newestId = async (page: Page) =>
  Number(await page.locator('[data-testid=events] li').first().getAttribute('data-id'));

test('going offline shows Offline, and coming back online reconnects without waiting out the backoff', async ({ page, context }) => {
  await page.goto(server.url);
  const badge = page.getByTestId('feed-status');
  await expect(badge).toHaveText('Live');

  await context.setOffline(true);
  // Offline, the client waits for the network (or its longest backoff,
  // 10 s) rather than counting down attempts that cannot succeed.
  await expect(badge).toHaveText('Offline');
  const before = await newestId(page);

  await context.setOffline(false);
  // The `online` event ends the wait: Live well inside the 10 s it would
  // otherwise have waited.
  await expect(badge).toHaveText('Live', { timeout: 5_000 });
  await expect.poll(() => newestId(page)).toBeGreaterThan(before);
});

test('the chat socket comes back after the network does, and can send again', async ({ page, context }) => {
  await page.goto(server.url + '/chat');
  await page.getByRole('button', { name: 'Sign in' }).click();
  const status = page.getByTestId('chat-status');
  await expect(status).toHaveText('Live');

  await context.setOffline(true);
  await expect(status).toHaveText('Offline');
  // Sending stays possible: what is typed waits for the network.
  await expect(page.getByTestId('chat-send')).toBeEnabled();

  await context.setOffline(false);
  await expect(status).toHaveText('Live', { timeout: 5_000 });
  await page.getByTestId('chat-input').fill('back online');
  await page.getByTestId('chat-send').click();
  await expect(page.locator('[data-testid=messages] li.msg:not([data-testid=own])').last()).toContainText('back online');
});

test('a tab that becomes visible again reconnects at once', async ({ page }) => {
  await page.goto(server.url + '/chat');
  await page.getByRole('button', { name: 'Sign in' }).click();
  const status = page.getByTestId('chat-status');
  await expect(status).toHaveText('Live');

  // The server goes away until the client's backoff has grown to a long wait.
  await server.stop();
  await expect(status).toHaveText(/^Reconnecting in ([6-9]|10) s$/, { timeout: 60_000 });
  await server.launch();
  // Coming back to the tab (here: the event a browser fires then) ends the
  // wait: Live before the countdown, still at 5 s or more, could run out.
  await page.evaluate(() => document.dispatchEvent(new Event('visibilitychange', { bubbles: true })));
  await expect(status).toHaveText('Live', { timeout: 3_000 });
});

test('a frozen server is noticed within two ping intervals, and the socket comes back when it thaws', async ({ page }) => {
  await server.dispose();
  server = await PulseServer.start({ ...ENV, PULSE_WS_PING_INTERVAL: '1s' });
  // The page learns the server's ping interval from its first pong.
  const pong = new Promise<void>((resolve) => {
    page.on('websocket', (ws) =>
      ws.on('framereceived', (f) => {
        if (String(f.payload).includes('"pong"')) resolve();
      }),
    );
  });
  await page.goto(server.url + '/chat');
  await page.getByRole('button', { name: 'Sign in' }).click();
  const status = page.getByTestId('chat-status');
  await expect(status).toHaveText('Live');
  await pong;

  // The socket stays open, but nothing comes: after 2 × 1 s it counts as dead.
  server.freeze();
  await expect(status).not.toHaveText('Live', { timeout: 3_000 });
  server.thaw();
  await expect(status).toHaveText('Live', { timeout: 20_000 });
});

test('the feed stream notices a frozen server by its missing heartbeats, and comes back when it thaws', async ({ page }) => {
  await server.dispose();
  server = await PulseServer.start({ ...ENV, PULSE_SSE_KEEP_ALIVE: '1s' });
  await page.goto(server.url);
  const badge = page.getByTestId('feed-status');
  await expect(badge).toHaveText('Live');
  // The stream's first heartbeat (sent as it opens) has told the page to
  // expect one every second.
  await expect.poll(() => newestId(page)).toBeGreaterThan(0);

  // The connection stays open but goes quiet: after 2 × 1 s it counts as
  // dead, though the browser still calls it open.
  server.freeze();
  await expect(badge).not.toHaveText('Live', { timeout: 3_000 });
  server.thaw();
  await expect(badge).toHaveText('Live', { timeout: 20_000 });
  const before = await newestId(page);
  await expect.poll(() => newestId(page)).toBeGreaterThan(before);
});
