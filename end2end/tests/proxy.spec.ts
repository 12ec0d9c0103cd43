import { test, expect } from './fixtures';
import { BrowserContext, Page } from '@playwright/test';
import { PulseServer } from './server';
import { RedisServer } from './redis';
import { Nginx } from './nginx';
import { members, notice, recordStatus, say, signIn, status, texts } from './chat';

// Two instances over one Redis behind the README's nginx, as production runs
// them: no sticky sessions, so a page's requests land on either instance.

let redis: RedisServer;
let servers: PulseServer[];
let proxies: Nginx[];
let contexts: BrowserContext[];

test.beforeEach(async () => {
  redis = await RedisServer.start();
  const env = {
    PULSE_JWT_SECRET: 'an end-to-end secret that is long enough!',
    PULSE_REDIS_URL: redis.url,
    PULSE_TRUSTED_PROXIES: '127.0.0.1',
    PULSE_WS_PING_INTERVAL: '1s',
  };
  servers = [await PulseServer.start(env), await PulseServer.start(env)];
  proxies = [];
  contexts = [];
});

test.afterEach(async () => {
  for (const c of contexts) await c.close();
  for (const p of proxies) await p.stop();
  for (const s of servers) await s.dispose();
  await redis.stop();
});

const upstreams = () => servers.map((s) => `127.0.0.1:${s.port}`);

async function proxy(options: { stripUpgrade?: boolean; port?: number } = {}): Promise<Nginx> {
  const nginx = await Nginx.start(upstreams(), options);
  proxies.push(nginx);
  return nginx;
}

async function newPage(browser: import('@playwright/test').Browser): Promise<Page> {
  const context = await browser.newContext();
  contexts.push(context);
  return context.newPage();
}

test('behind an nginx that strips Upgrade, two users chat in rooms over HTTP across instances with a WebSocket user, and upgrade when it passes', async ({ browser }) => {
  test.setTimeout(90_000);
  const strict = await proxy({ stripUpgrade: true });
  const open = await proxy();
  const fay = await newPage(browser);
  const gus = await newPage(browser);
  const wes = await newPage(browser);
  const transport = (page: Page) => page.getByTestId('chat-transport');

  await signIn(fay, strict.url + '/rooms/tech', 'Fay');
  await expect(transport(fay)).toBeVisible();
  await signIn(wes, open.url + '/rooms/tech', 'Wes');
  await expect(transport(wes)).toBeHidden();
  await expect(members(fay)).toHaveText(['Fay', 'Wes']);

  // A fallback user and a WebSocket user talk.
  await say(fay, 'over http');
  await expect(texts(wes).last()).toHaveText('over http');
  await say(wes, 'over a socket');
  await expect(texts(fay).last()).toHaveText('over a socket');

  // A second fallback user joins later, gets the history and is seen.
  await signIn(gus, strict.url + '/rooms/general', 'Gus');
  await expect(transport(gus)).toBeVisible();
  await gus.getByRole('button', { name: '#tech' }).click();
  await expect(gus.getByTestId('current-room')).toHaveText('#tech');
  await expect(texts(gus)).toHaveText(['over http', 'over a socket']);
  await expect(members(fay)).toHaveText(['Fay', 'Gus', 'Wes']);
  await say(gus, 'hello from gus');
  await expect(texts(fay).last()).toHaveText('hello from gus');
  await expect(texts(wes).last()).toHaveText('hello from gus');
  // Posts and streams have spread over both instances (no stickiness):
  // each has served some of the fallback's requests.
  const served = new Set([...strict.servedBy('/api/chat/stream'), ...strict.servedBy('/api/chat/send')]);
  expect([...served].sort()).toEqual(upstreams().sort());

  // Gus leaves the room: the others see him go.
  await gus.getByRole('button', { name: '#general' }).click();
  await expect(members(fay)).toHaveText(['Fay', 'Wes']);
  await expect(fay.locator('li.notice').last()).toContainText(notice('Gus', 'left'));

  // The proxy is fixed (same address): on the next sign of a changed network
  // Fay's client moves to a WebSocket, with nothing lost or doubled.
  await strict.stop();
  await proxy({ port: strict.port });
  await fay.evaluate(() => document.dispatchEvent(new Event('visibilitychange', { bubbles: true })));
  await expect(transport(fay)).toBeHidden({ timeout: 20_000 });
  await expect(status(fay)).toHaveText('Live');
  await say(fay, 'back on a socket');
  await expect(texts(wes).last()).toHaveText('back on a socket');
  const all = ['over http', 'over a socket', 'hello from gus', 'back on a socket'];
  await expect(texts(fay)).toHaveText(all);
  await expect(texts(wes)).toHaveText(all);
});

test('behind nginx, a frozen instance is noticed within two ping intervals and the page moves to the other one', async ({ browser }) => {
  test.setTimeout(90_000);
  const open = await proxy();
  const ada = await newPage(browser);
  // The page learns the server's ping interval from its first pong.
  const pong = new Promise<void>((resolve) => {
    ada.on('websocket', (ws) =>
      ws.on('framereceived', (f) => {
        if (String(f.payload).includes('"pong"')) resolve();
      }),
    );
  });
  await signIn(ada, open.url + '/chat', 'Ada');
  await pong;
  const ws = 'pulse_open_connections{transport="ws"}';
  await expect.poll(async () => (await servers[0].metric(ws)) + (await servers[1].metric(ws))).toBe(1);
  const held = (await servers[0].metric(ws)) === 1 ? 0 : 1;
  const other = servers[1 - held];

  // The instance holding Ada's socket freezes: the socket stays open and
  // goes quiet. After 2 × 1 s the page counts it as dead.
  const seen = await recordStatus(ada);
  servers[held].freeze();
  await expect.poll(async () => (await seen()).some((s) => s !== 'Live'), { timeout: 3_000, intervals: [100] }).toBe(true);
  // It reconnects through nginx; an attempt that reaches the frozen one
  // times out (10 s) and the next goes to the other instance.
  await expect(status(ada)).toHaveText('Live', { timeout: 60_000 });
  await expect.poll(() => other.metric(ws)).toBe(1);
  await say(ada, 'on the other one');
  await expect(texts(ada).last()).toHaveText('on the other one');
});
