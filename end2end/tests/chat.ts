// What the chat tests do on the Chat and Rooms pages, in one place.
import { Page } from '@playwright/test';
import { expect } from './fixtures';

/** The chat's connection badge. */
const STATUS = 'chat-status';
export const status = (page: Page) => page.getByTestId(STATUS);
/** Messages of the room's stream on screen (not one's own on their way). */
export const messages = (page: Page) => page.locator('[data-testid=messages] li.msg:not([data-testid=own])');
/** One's own messages on their way (sending…, will retry, not sent, sent). */
export const own = (page: Page) => page.getByTestId('own');
export const texts = (page: Page) => messages(page).locator('.msg-text');
export const input = (page: Page) => page.getByTestId('chat-input');
export const send = (page: Page) => page.getByTestId('chat-send');
/** The display names in the member list (each also shows its tag). */
export const members = (page: Page) => page.locator('[data-testid=members] .member-name');
/** A notice that `name` (with their tag) joined or left. */
export const notice = (name: string, verb: 'joined' | 'left') => new RegExp(`${name} #[0-9a-f]{4} ${verb}`);

/**
 * Starts recording every text the chat status badge shows, and returns a
 * function that reads them. A state can last less than Playwright's polling
 * interval (a page that reconnects at once to another instance); polling the
 * badge would miss it, the recording does not.
 */
export async function recordStatus(page: Page): Promise<() => Promise<string[]>> {
  await page.evaluate((id) => {
    const seen: string[] = [];
    (window as any).__pulseStatus = seen;
    const note = () => {
      const text = document.querySelector(`[data-testid=${id}]`)?.textContent ?? '';
      if (seen[seen.length - 1] !== text) seen.push(text);
    };
    note();
    new MutationObserver(note).observe(document.body, { subtree: true, childList: true, characterData: true });
  }, STATUS);
  return () => page.evaluate(() => [...(window as any).__pulseStatus] as string[]);
}

/** Opens `url` and signs in as `name` (or the suggested name). */
export async function signIn(page: Page, url: string, name?: string): Promise<string> {
  await page.goto(url);
  const field = page.getByTestId('sign-in-name');
  await expect(field).toHaveValue(/^User\d{3}$/);
  if (name) await field.fill(name);
  const chosen = await field.inputValue();
  await page.getByRole('button', { name: 'Sign in' }).click();
  await expect(page.getByTestId('whoami')).toHaveText(chosen);
  await expect(status(page)).toHaveText('Live');
  return chosen;
}

/** Sends `text` with Enter, and waits until it is in the room's stream on
 * screen (its echo), with nothing of one's own left on its way. */
/** Types `text` and presses Enter, without waiting for the server. */
export async function type(page: Page, text: string) {
  await input(page).fill(text);
  await input(page).press('Enter');
  await expect(input(page)).toHaveValue('');
}

export async function say(page: Page, text: string) {
  await type(page, text);
  await expect(own(page)).toHaveCount(0);
}
