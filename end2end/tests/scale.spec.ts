import { test, expect } from './fixtures';
import { PulseServer } from './server';
import { RedisServer } from './redis';
import { input, own, say, texts } from './chat';

let redis: RedisServer;
let server: PulseServer;

test.beforeEach(async () => {
  redis = await RedisServer.start();
  server = await PulseServer.start({
    PULSE_JWT_SECRET: 'an end-to-end secret that is long enough!',
    PULSE_REDIS_URL: redis.url,
  });
});

test.afterEach(async () => {
  await server.dispose();
  await redis.stop();
});


test('with Redis: a page whose server is replaced reconnects and keeps chatting, history intact', async ({ page }) => {
  await page.goto(server.url + '/chat');
  await page.getByTestId('sign-in-name').fill('Dora');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await expect(page.getByTestId('chat-status')).toHaveText('Live');
  await say(page, 'kept in redis');

  // The instance goes away and a new process takes its place: its memory is
  // empty, so the history can only come from Redis.
  await server.stop();
  await expect(page.getByTestId('chat-status')).not.toHaveText('Live');
  await server.launch();
  await expect(page.getByTestId('chat-status')).toHaveText('Live', { timeout: 20_000 });

  await page.reload();
  await expect(page.getByTestId('chat-status')).toHaveText('Live');
  await expect(texts(page)).toHaveText(['kept in redis']);
  await say(page, 'and chatting on');
  await expect(texts(page)).toHaveText(['kept in redis', 'and chatting on']);
});

test('with Redis down, the badges say the other servers are out of reach, and clear when it is back', async ({ page, context }) => {
  await page.goto(server.url + '/chat');
  await page.getByRole('button', { name: 'Sign in' }).click();
  const status = page.getByTestId('chat-status');
  await expect(status).toHaveText('Live');
  const feed = await context.newPage();
  await feed.goto(server.url);
  const feedStatus = feed.getByTestId('feed-status');
  await expect(feedStatus).toHaveText('Live');

  await redis.stop();
  await expect(status).toHaveText('Live · other servers unreachable');
  await expect(feedStatus).toHaveText('Live · other servers unreachable');
  // Nothing is shown as sent that the other servers' members would not get:
  // the message is refused (unavailable), waits saying why, and is sent
  // again by the page itself once Redis is back, once.
  await input(page).fill('sent once they are back');
  await input(page).press('Enter');
  await expect(input(page)).toHaveValue('');
  await expect(own(page).getByTestId('own-status')).toContainText('cannot be reached');
  await expect(texts(page)).toHaveCount(0);

  await redis.launch();
  await expect(status).toHaveText('Live', { timeout: 20_000 });
  await expect(feedStatus).toHaveText('Live');
  await expect(texts(page)).toHaveText(['sent once they are back'], { timeout: 20_000 });
  await expect(own(page)).toHaveCount(0);
  await say(page, 'and on');
  await expect(texts(page)).toHaveText(['sent once they are back', 'and on']);
});
