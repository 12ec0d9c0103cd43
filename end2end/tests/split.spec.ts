import { test, expect } from './fixtures';
import { Page } from '@playwright/test';
import { PulseServer } from './server';
import { signIn } from './chat';

// The release build is split (cargo-leptos --split): `/` downloads the Feed's
// code only, and each other page's chunk comes when it is first needed.

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

/** The names of the files under /pkg/ that `page` requests from now on. */
function pkgRequests(page: Page): string[] {
  const names: string[] = [];
  page.on('request', (r) => {
    const m = /\/pkg\/([^?]+)/.exec(r.url());
    if (m) names.push(m[1]);
  });
  return names;
}

/** The uncaught errors of `page` from now on (a hydration panic is one). */
function noPageErrors(page: Page): string[] {
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(e.message));
  return errors;
}

/** The page's own chunk: `split_pulse_<name>.wasm`. */
const chunk = (name: string) => `**/pkg/split_pulse_${name}.wasm`;

test('/ downloads only the Feed; a page’s code comes on the first visit, and every page hydrates from a reload', async ({ page }) => {
  const errors = noPageErrors(page);
  const requested = pkgRequests(page);
  await page.goto(server.url);
  await expect(page.getByTestId('feed-status')).toHaveText('Live');
  expect(requested.filter((n) => n.endsWith('.wasm'))).toEqual(['pulse.wasm']);

  const nav = page.getByRole('navigation', { name: 'Main' });
  await nav.getByRole('link', { name: 'Dashboard' }).click();
  await expect(page.getByTestId('dashboard-status')).toHaveText('Live');
  expect(requested).toContain('split_pulse_dashboard.wasm');
  expect(requested).not.toContain('split_pulse_chat.wasm');

  // A first load straight onto a lazy page: its HTML asks for the page's
  // chunk beside the main module, and the loader uses that one download.
  requested.length = 0;
  await page.goto(server.url + '/dashboard');
  await expect(page.locator('link[rel=preload][href="/pkg/split_pulse_dashboard.wasm"]')).toHaveCount(1);
  await expect(page.getByTestId('dashboard-status')).toHaveText('Live');
  expect(requested.filter((n) => n === 'split_pulse_dashboard.wasm')).toHaveLength(1);

  // A reload of each lazy page hydrates it: its status goes Live (a
  // hydration mismatch would panic instead).
  await signIn(page, server.url + '/chat', 'Ada');
  for (const [path, status] of [
    ['/dashboard', 'dashboard-status'],
    ['/chat', 'chat-status'],
    ['/rooms/tech', 'chat-status'],
  ]) {
    await page.goto(server.url + path);
    await expect(page.getByTestId(status)).toHaveText('Live');
  }
  expect(errors).toEqual([]);
});

test('a page whose code cannot be downloaded says so and offers a retry that works', async ({ page }) => {
  const errors = noPageErrors(page);
  await page.goto(server.url);
  await expect(page.getByTestId('feed-status')).toHaveText('Live');

  // After a navigation: the message in the page's place.
  await page.route(chunk('dashboard'), (route) => route.abort('internetdisconnected'));
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Dashboard' }).click();
  const notice = page.getByTestId('page-unavailable');
  await expect(notice).toBeVisible();
  await expect(notice).toContainText('could not be downloaded');
  // The rest of the app still works: back to the feed, and it is live.
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Feed' }).click();
  await expect(page.getByTestId('feed-status')).toHaveText('Live');
  await page.goBack();
  await expect(notice).toBeVisible();
  await page.unroute(chunk('dashboard'));
  await notice.getByRole('button', { name: 'Try again' }).click();
  await expect(page.getByTestId('dashboard-status')).toHaveText('Live');
  await expect(notice).toHaveCount(0);

  // On a first load of that page: the server's page stays on screen, with
  // the message along the bottom; nothing panics. (Routing disables the HTTP
  // cache, so the chunk is requested again.)
  await page.route(chunk('dashboard'), (route) => route.abort('internetdisconnected'));
  await page.goto(server.url + '/dashboard');
  await expect(notice).toBeVisible();
  await expect(notice).toBeInViewport();
  // It hides neither the navigation nor the page's heading.
  const below = async (selector: string) => {
    const [n, t] = await Promise.all([notice.boundingBox(), page.locator(selector).first().boundingBox()]);
    return n!.y >= t!.y + t!.height;
  };
  expect(await below('header.topbar')).toBe(true);
  expect(await below('h1')).toBe(true);
  await expect(page.getByRole('heading', { name: 'Dashboard' })).toBeVisible();
  await expect(page.getByTestId('dashboard-status')).not.toHaveText('Live');
  await page.unroute(chunk('dashboard'));
  await notice.getByRole('button', { name: 'Try again' }).click();
  await expect(page.getByTestId('dashboard-status')).toHaveText('Live');
  await expect(notice).toHaveCount(0);
  // The blocked fetches themselves are reported as unhandled rejections by
  // cargo-leptos's loader (it awaits a chunk's dependencies before its own
  // fetch); anything else (a panic) is a failure.
  expect(errors.filter((e) => e !== 'Failed to fetch')).toEqual([]);
});

test('clicking through the pages faster than their chunks arrive ends on the last page clicked, working', async ({ page }) => {
  const errors = noPageErrors(page);
  await page.goto(server.url);
  await expect(page.getByTestId('feed-status')).toHaveText('Live');
  // A slow network: every chunk takes 400 ms longer to arrive.
  await page.route('**/pkg/*.wasm', async (route) => {
    if (route.request().url().endsWith('/pulse.wasm')) return route.continue();
    await new Promise((resolve) => setTimeout(resolve, 400));
    await route.continue();
  });
  const nav = page.getByRole('navigation', { name: 'Main' });
  for (const name of ['Chat', 'Rooms', 'Dashboard', 'Chat', 'Dashboard']) {
    await nav.getByRole('link', { name }).click();
  }
  await expect(page).toHaveURL(/\/dashboard$/);
  await expect(page.getByTestId('dashboard-status')).toHaveText('Live');
  await expect(page.getByRole('heading', { level: 1 })).toHaveText(['Dashboard']);
  // And back to a page whose chunk came while another was shown.
  await nav.getByRole('link', { name: 'Rooms' }).click();
  await expect(page.getByRole('heading', { level: 1 })).toHaveText(['Rooms']);
  expect(errors).toEqual([]);
});
