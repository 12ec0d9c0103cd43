import { test, expect } from './fixtures';
import { PulseServer } from './server';

let server: PulseServer;

test.beforeEach(async () => {
  server = await PulseServer.start({ PULSE_JWT_SECRET: 'an end-to-end secret that is long enough!' });
});

test.afterEach(async () => {
  await server.dispose();
});

test('dashboard: live figures and charts follow the real connections', async ({ browser }) => {
  const dash = await (await browser.newContext()).newPage();
  await dash.goto(server.url + '/dashboard');
  await expect(dash.getByTestId('dashboard-status')).toHaveText('Live');
  await expect(dash.getByTestId('broker')).toHaveText('in-process');
  // The dashboard's own stream is an SSE connection.
  await expect(dash.getByTestId('open-sse')).not.toHaveText('—');
  const sseBefore = Number(await dash.getByTestId('open-sse').textContent());

  // A chat user appears as a WebSocket, their messages as a rate.
  const chat = await (await browser.newContext()).newPage();
  await chat.goto(server.url + '/chat');
  await chat.getByRole('button', { name: 'Sign in' }).click();
  await expect(chat.getByTestId('chat-status')).toHaveText('Live');
  await expect(dash.getByTestId('open-ws')).toHaveText('1');
  for (let i = 0; i < 5; i++) {
    await chat.getByTestId('chat-input').fill(`m${i}`);
    await chat.getByTestId('chat-input').press('Enter');
  }
  await expect.poll(async () => Number(await dash.getByTestId('delivered-rate').textContent())).toBeGreaterThan(0);
  await expect(dash.locator('svg polyline').first()).toHaveAttribute('points', /\d+(\.\d+)?,\d+/);
  expect(await dash.locator('svg polyline').count()).toBe(4);

  await chat.close();
  await expect(dash.getByTestId('open-ws')).toHaveText('0');
  // The samples since the chat came and went include the dashboard's own
  // stream (the very first one, taken as it subscribed, may not).
  const sse = Number(await dash.getByTestId('open-sse').textContent());
  expect(sse).toBeGreaterThanOrEqual(Math.max(1, sseBefore));
  // A feed page's stream shows up as one more SSE connection, and goes again:
  // the dashboard's stream is alive and counts what is open.
  const feed = await (await browser.newContext()).newPage();
  await feed.goto(server.url + '/');
  await expect(feed.getByTestId('feed-status')).toHaveText('Live');
  await expect(dash.getByTestId('open-sse')).toHaveText(String(sse + 1));
  await feed.close();
  await expect(dash.getByTestId('open-sse')).toHaveText(String(sse));

  // With its stream down the dashboard says so, and shows no stale figures
  // or lines.
  await server.stop();
  await expect(dash.getByTestId('dashboard-status')).not.toHaveText('Live');
  await expect(dash.getByTestId('open-sse')).toHaveText('—');
  await expect(dash.locator('svg polyline').first()).toHaveAttribute('points', '');
});

test('feed: a signed-in user publishes a notification, shown apart from updates in every feed', async ({ browser }) => {
  const publisher = await (await browser.newContext()).newPage();
  const reader = await (await browser.newContext()).newPage();
  await reader.goto(server.url);
  await expect(reader.getByTestId('feed-status')).toHaveText('Live');

  await publisher.goto(server.url + '/chat');
  await publisher.getByTestId('sign-in-name').fill('Ops');
  await publisher.getByRole('button', { name: 'Sign in' }).click();
  await expect(publisher.getByTestId('whoami')).toHaveText('Ops');
  await publisher.goto(server.url);
  await publisher.getByTestId('publish-text').fill('<b>maintenance</b> at 5');
  await publisher.getByRole('button', { name: 'Publish' }).click();

  const note = reader.locator('[data-testid=notifications] li').first();
  await expect(note.locator('.note-user')).toHaveText('Ops');
  await expect(note.locator('.note-text')).toHaveText('<b>maintenance</b> at 5');
  // Not mixed into the ticker's list.
  await expect(reader.locator('[data-testid=events] li.event-notification')).toHaveCount(0);
  await expect(publisher.getByTestId('publish-text')).toHaveValue('');

  // Without a session, publishing is refused with a clear message.
  const anonymous = await (await browser.newContext()).newPage();
  await anonymous.goto(server.url);
  await expect(anonymous.getByTestId('feed-status')).toHaveText('Live');
  await anonymous.getByTestId('publish-text').fill('hello');
  await anonymous.getByRole('button', { name: 'Publish' }).click();
  await expect(anonymous.locator('.publish [role=alert]')).toContainText('sign in');
});
