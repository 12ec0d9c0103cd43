// Front-end timing for `make bench` (scenario 5), in headless Chromium:
// loads the feed page of a running pulse server several times and prints,
// as one JSON line, the medians of
//   - firstRows: navigation start → the first paint, which already holds the
//     server-rendered events (checked: the HTML has rows before any script);
//   - hydrated: navigation start → the `pulse:hydrated` performance mark;
//   - live: hydration → the badge says Live (the SSE stream is open);
//   - firstUpdate: hydration → the first pushed update row on screen;
//   - latency: publish → on screen for that row (its id is the publish time
//     in ms × 1000), i.e. the delivery itself, without the wait for the tick.
// and what the browser downloads of the app (the files under /pkg/, counted
// at their precompressed brotli size in target/site/pkg, as the server sends
// them): for `/`, then what a navigation to each other page adds.
// Usage: node end2end/bench-front.mjs URL [RUNS]   (from the repository root)
import { chromium } from '@playwright/test';
import { statSync } from 'node:fs';

const url = process.argv[2];
const runs = Number(process.argv[3] ?? 7);
if (!url) {
  console.error('usage: node bench-front.mjs URL [RUNS]');
  process.exit(2);
}

// Runs in the page before its own scripts: records when things appear.
const probe = () => {
  window.__pulse = { rowsInHtml: 0, live: null, update: null, updateLatency: null };
  const seen = new Set();
  const observer = new MutationObserver(() => {
    const badge = document.querySelector('[data-testid=feed-status]');
    if (window.__pulse.live === null && badge && badge.textContent.trim() === 'Live') {
      window.__pulse.live = performance.now();
    }
    if (window.__pulse.update !== null) return;
    for (const li of document.querySelectorAll('li.event-update[data-id]')) {
      if (!seen.has(li.dataset.id) && window.__pulse.baseline !== undefined
          && Number(li.dataset.id) > window.__pulse.baseline) {
        window.__pulse.update = performance.now();
        window.__pulse.updateLatency = Date.now() - Number(li.dataset.id) / 1000;
        return;
      }
    }
  });
  document.addEventListener('DOMContentLoaded', () => {
    const rows = document.querySelectorAll('li.event-update[data-id]');
    window.__pulse.rowsInHtml = rows.length;
    window.__pulse.baseline = Math.max(0, ...[...rows].map((li) => Number(li.dataset.id)));
    rows.forEach((li) => seen.add(li.dataset.id));
    observer.observe(document.body, { subtree: true, childList: true, characterData: true });
  });
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--no-first-run'],
});
const samples = [];
const transfer = {};
try {
  for (let i = 0; i < runs; i++) {
    // A fresh context each time: nothing cached, like a first visit.
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.addInitScript(probe);
    await page.goto(url);
    await page.waitForFunction(() => window.__pulse?.update !== null
      && performance.getEntriesByName('pulse:hydrated').length > 0, null, { timeout: 15_000 });
    samples.push(await page.evaluate(() => {
      const paint = performance.getEntriesByName('first-contentful-paint')[0];
      const hydrated = performance.getEntriesByName('pulse:hydrated')[0].startTime;
      const p = window.__pulse;
      return {
        rowsInHtml: p.rowsInHtml,
        firstRows: paint ? paint.startTime : NaN,
        hydrated,
        live: p.live - hydrated,
        firstUpdate: p.update - hydrated,
        latency: p.updateLatency,
      };
    }));
    await context.close();
  }

  // Downloads: `/`, then each page in turn by its link (as a visitor would).
  const context = await browser.newContext();
  const page = await context.newPage();
  const requested = [];
  page.on('request', (r) => {
    const m = /\/pkg\/([^?]+)/.exec(r.url());
    if (m) requested.push(m[1]);
  });
  const brotli = (files) => files.reduce((sum, f) => sum + statSync(`target/site/pkg/${f}.br`).size, 0) / 1000;
  await page.goto(url);
  await page.waitForFunction(() => performance.getEntriesByName('pulse:hydrated').length > 0);
  transfer.first = brotli(requested.splice(0));
  for (const name of ['Chat', 'Rooms', 'Dashboard']) {
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name }).click();
    await page.getByRole('heading', { level: 1, name }).waitFor();
    await page.waitForLoadState('networkidle');
    transfer[name.toLowerCase()] = brotli(requested.splice(0));
  }
  await context.close();
} finally {
  await browser.close();
}

const median = (key) => {
  const v = samples.map((s) => s[key]).sort((a, b) => a - b);
  return v[Math.floor(v.length / 2)];
};
console.log(JSON.stringify({
  runs,
  rowsInHtml: Math.min(...samples.map((s) => s.rowsInHtml)),
  firstRows: median('firstRows'),
  hydrated: median('hydrated'),
  live: median('live'),
  firstUpdate: median('firstUpdate'),
  latency: median('latency'),
  transferFirst: transfer.first,
  transferChat: transfer.chat,
  transferRooms: transfer.rooms,
  transferDashboard: transfer.dashboard,
}));
