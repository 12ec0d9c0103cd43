// The `test` every spec uses: Playwright's, with one rule added to every test:
// no page may violate its Content-Security-Policy. A violation anywhere (a
// script without the nonce, a connection to another origin…) fails the test.
import { test as base, expect, BrowserContext } from '@playwright/test';

export { expect };

/** Reports every CSP violation of every page in `context` to `found`. */
async function watch(context: BrowserContext, found: string[]) {
  // Chromium logs violations to the console; the event makes sure of it.
  await context.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) =>
      console.error(`Content Security Policy violation: ${e.violatedDirective} ${e.blockedURI}`),
    );
  });
  context.on('console', (msg) => {
    if (/Content Security Policy/i.test(msg.text())) found.push(msg.text());
  });
}

export const test = base.extend<{ cspGuard: void }>({
  cspGuard: [
    async ({ browser, context }, use) => {
      const found: string[] = [];
      await watch(context, found);
      // Contexts a test opens itself (a second user) are watched too.
      const open = browser.newContext.bind(browser);
      browser.newContext = async (options) => {
        const c = await open(options);
        await watch(c, found);
        return c;
      };
      await use();
      browser.newContext = open;
      expect(found, 'Content-Security-Policy violations').toEqual([]);
    },
    { auto: true },
  ],
});
