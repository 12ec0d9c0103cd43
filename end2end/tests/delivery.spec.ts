import { test, expect } from './fixtures';
import { Browser, BrowserContext, Page } from '@playwright/test';
import { PulseServer } from './server';
import { RedisServer } from './redis';
import { Nginx } from './nginx';
import { members, own, recordStatus, say, send, signIn, status, texts, type } from './chat';

// Every message on screen accounted for: pending, sent, failed, recovered,
// missing. Real servers (and Redis and nginx where a test needs them), real
// Chromium.

const SECRET = 'an end-to-end secret that is long enough!';

let redis: RedisServer | undefined;
let servers: PulseServer[] = [];
let proxies: Nginx[] = [];
let contexts: BrowserContext[] = [];

test.afterEach(async () => {
  for (const c of contexts) await c.close();
  for (const p of proxies) await p.stop();
  for (const s of servers) await s.dispose();
  await redis?.stop();
  redis = undefined;
  servers = [];
  proxies = [];
  contexts = [];
});

async function start(env: Record<string, string> = {}): Promise<PulseServer> {
  const server = await PulseServer.start({ PULSE_JWT_SECRET: SECRET, ...env });
  servers.push(server);
  return server;
}

async function newContext(browser: Browser): Promise<[BrowserContext, Page]> {
  const context = await browser.newContext();
  contexts.push(context);
  return [context, await context.newPage()];
}

/** Alice and Bob, each in a browser of their own, signed in at `url`. */
async function aliceAndBob(browser: Browser, url: string): Promise<[BrowserContext, Page, Page]> {
  const [aliceContext, alice] = await newContext(browser);
  const [, bob] = await newContext(browser);
  await signIn(alice, url, 'Alice');
  await signIn(bob, url, 'Bob');
  return [aliceContext, alice, bob];
}

/** The texts `page` shows, checked to be each once. */
async function onceEach(page: Page): Promise<string[]> {
  const all = await texts(page).allTextContents();
  expect(new Set(all).size, all.join(' | ')).toBe(all.length);
  return all;
}

test('typed offline: shown pending, sent in order once back, each once for the peer too', async ({ browser }) => {
  const server = await start();
  const [aliceContext, alice, bob] = await aliceAndBob(browser, server.url + '/chat');

  await aliceContext.setOffline(true);
  await expect(status(alice)).toHaveText('Offline');
  for (const text of ['one', 'two', 'three']) await type(alice, text);
  await expect(own(alice)).toHaveCount(3);
  await expect(own(alice).locator('.msg-text')).toHaveText(['one', 'two', 'three']);
  await expect(own(alice).first()).toHaveClass(/pending/);
  await expect(own(alice).first().getByTestId('own-status')).toHaveText('sending…');

  await aliceContext.setOffline(false);
  await expect(own(alice)).toHaveCount(0, { timeout: 15_000 });
  await expect(texts(alice)).toHaveText(['one', 'two', 'three']);
  await expect(texts(bob)).toHaveText(['one', 'two', 'three']);
  await onceEach(alice);
  await onceEach(bob);
});

test('typed offline, then reloaded while still offline: sent once the network is back', async ({ browser }) => {
  const server = await start();
  const [aliceContext, alice, bob] = await aliceAndBob(browser, server.url + '/chat');

  await aliceContext.setOffline(true);
  await expect(status(alice)).toHaveText('Offline');
  await type(alice, 'survives a reload');
  await expect(own(alice)).toHaveCount(1);
  // The reload fails (offline); what was typed is kept by the browser.
  await alice.reload().catch(() => {});
  await aliceContext.setOffline(false);
  await alice.goto(server.url + '/chat');
  await expect(texts(bob)).toHaveText(['survives a reload'], { timeout: 15_000 });
  await expect(own(alice)).toHaveCount(0);
  await expect(texts(alice)).toHaveText(['survives a reload']);
  // Once: nothing more comes for Bob (a later message is the next one).
  await say(alice, 'and this');
  await expect(texts(bob)).toHaveText(['survives a reload', 'and this']);
});

test('a rate-limited message says so, is sent again by itself, and appears once', async ({ browser }) => {
  test.setTimeout(90_000);
  // Three a minute: the fourth waits about twenty seconds.
  const server = await start({ PULSE_RATE_LIMIT_PER_MIN: '3' });
  const [, alice, bob] = await aliceAndBob(browser, server.url + '/chat');
  for (const text of ['1', '2', '3', '4']) await type(alice, text);
  await expect(own(alice).getByTestId('own-status')).toHaveText(/will retry: too many messages/);
  await expect(texts(bob)).toHaveText(['1', '2', '3']);
  await expect(texts(bob)).toHaveText(['1', '2', '3', '4'], { timeout: 60_000 });
  await expect(own(alice)).toHaveCount(0);
  await onceEach(alice);
  await onceEach(bob);
});

test('missed messages come back after a server restart; past PULSE_RECOVERY_MAX the room says some may be missing', async ({ browser }) => {
  test.setTimeout(90_000);
  redis = await RedisServer.start();
  const server = await start({ PULSE_REDIS_URL: redis.url, PULSE_RECOVERY_MAX: '3' });
  const [aliceContext, alice, bob] = await aliceAndBob(browser, server.url + '/rooms/tech');
  await say(bob, 'before');
  await expect(texts(alice)).toHaveText(['before']);

  // Alice is away while Bob talks, and the server is replaced meanwhile:
  // the stream lives in Redis.
  await aliceContext.setOffline(true);
  await expect(status(alice)).toHaveText('Offline');
  for (const text of ['m1', 'm2', 'm3']) await say(bob, text);
  await server.stop();
  await server.launch();
  await expect(status(bob)).toHaveText('Live', { timeout: 20_000 });
  await aliceContext.setOffline(false);
  await expect(texts(alice)).toHaveText(['before', 'm1', 'm2', 'm3'], { timeout: 20_000 });
  await expect(alice.getByTestId('missing')).toHaveCount(0);

  // More missed than can be recovered (three here): said, in that room.
  await aliceContext.setOffline(true);
  await expect(status(alice)).toHaveText('Offline');
  for (const text of ['n1', 'n2', 'n3', 'n4']) await say(bob, text);
  await aliceContext.setOffline(false);
  await expect(alice.getByTestId('missing')).toHaveText('Some messages may be missing', { timeout: 20_000 });
  await expect(texts(alice).last()).toHaveText('n4');
  await onceEach(alice);
  // Not in another room.
  await alice.getByRole('button', { name: '#random' }).click();
  await expect(alice.getByTestId('current-room')).toHaveText('#random');
  await expect(alice.getByTestId('missing')).toHaveCount(0);
});

test('behind nginx, the page’s instance is killed while a peer talks: after the move every message is there once, in order, and the peer never flickered', async ({ browser }) => {
  test.setTimeout(120_000);
  redis = await RedisServer.start();
  const env = {
    PULSE_REDIS_URL: redis.url,
    PULSE_TRUSTED_PROXIES: '127.0.0.1',
    PULSE_WS_PING_INTERVAL: '1s',
  };
  const pair = [await start(env), await start(env)];
  const nginx = await Nginx.start(pair.map((s) => `127.0.0.1:${s.port}`));
  proxies.push(nginx);
  const [, ada] = await newContext(browser);
  await signIn(ada, nginx.url + '/rooms/tech', 'Ada');
  const ws = 'pulse_open_connections{transport="ws"}';
  await expect.poll(async () => (await pair[0].metric(ws)) + (await pair[1].metric(ws))).toBe(1);
  const held = (await pair[0].metric(ws)) === 1 ? 0 : 1;
  const other = pair[1 - held];
  // The peer talks to the other instance directly.
  const [, bob] = await newContext(browser);
  await signIn(bob, other.url + '/rooms/tech', 'Bob');
  await expect(members(bob)).toHaveText(['Ada', 'Bob']);
  const bobNotices = await bob.locator('li.notice').count();
  await say(bob, 'b0');
  await expect(texts(ada)).toHaveText(['b0']);

  const seen = await recordStatus(ada);
  await pair[held].kill();
  const sent = ['b0'];
  for (let i = 1; i <= 8; i++) {
    await say(bob, `b${i}`);
    sent.push(`b${i}`);
  }
  await expect.poll(async () => (await seen()).some((s) => s !== 'Live')).toBe(true);
  await expect(status(ada)).toHaveText('Live', { timeout: 60_000 });
  await expect(texts(ada)).toHaveText(sent, { timeout: 20_000 });
  await onceEach(ada);
  // Ada was back within the grace: Bob saw no left/joined for her, and
  // still lists her.
  await expect(members(bob)).toHaveText(['Ada', 'Bob']);
  expect(await bob.locator('li.notice').count()).toBe(bobNotices);
  await say(ada, 'back');
  await expect(texts(bob).last()).toHaveText('back');
});

test('with WebSockets blocked at the proxy, messages sent over the fallback are neither lost nor doubled', async ({ browser }) => {
  test.setTimeout(90_000);
  redis = await RedisServer.start();
  const env = { PULSE_REDIS_URL: redis.url, PULSE_TRUSTED_PROXIES: '127.0.0.1' };
  const pair = [await start(env), await start(env)];
  const strict = await Nginx.start(pair.map((s) => `127.0.0.1:${s.port}`), { stripUpgrade: true });
  proxies.push(strict);
  const [, fay] = await newContext(browser);
  const [, wes] = await newContext(browser);
  await signIn(fay, strict.url + '/chat', 'Fay');
  await expect(fay.getByTestId('chat-transport')).toBeVisible();
  await signIn(wes, pair[0].url + '/chat', 'Wes');
  const sent: string[] = [];
  // Quickly, without waiting in between: posts reach either instance.
  for (let i = 0; i < 12; i++) {
    await type(fay, `f${i}`);
    sent.push(`f${i}`);
  }
  await expect(texts(wes)).toHaveText(sent, { timeout: 30_000 });
  await expect(texts(fay)).toHaveText(sent);
  await expect(own(fay)).toHaveCount(0);
  await onceEach(fay);
  await onceEach(wes);
  await expect(send(fay)).toBeEnabled();
});
