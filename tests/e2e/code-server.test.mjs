// code-server (from npm) as john's second tool, behind a strip_prefix route: code-server uses
// relative URLs, so latchkey forwards /user/john/code/... as /... . The workbench loads in
// Chromium with its WebSockets, for john and for nina after he shares it; revoking nina closes
// her WebSockets.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import {
  CODE_SERVER_BIN, freePort, launchBrowser, need, person, Proc, request, shot, signIn,
  startLatchkey, stopAll, waitFor, watchSockets, withFreshPorts, workDir,
} from './harness.mjs';

const dir = workDir('code-server');
let lk;
let cs;
let browser;

before(async () => {
  const bin = need(CODE_SERVER_BIN, 'scripts/test installs code-server into tests/e2e/code-server; its install log says why it failed.');
  browser = await launchBrowser();
  lk = await startLatchkey(dir);
  const workspace = path.join(dir, 'workspace');
  fs.mkdirSync(workspace, { recursive: true });
  fs.writeFileSync(path.join(workspace, 'hello.py'), 'print("hello from john")\n');
  fs.writeFileSync(path.join(dir, 'config.yaml'), 'auth: none\n');
  const port = await withFreshPorts(async () => {
    const p = await freePort();
    cs = new Proc('code-server', bin, [
      '--auth', 'none', '--bind-addr', `127.0.0.1:${p}`, '--config', path.join(dir, 'config.yaml'),
      '--disable-telemetry', '--disable-update-check', '--disable-workspace-trust',
      '--user-data-dir', path.join(dir, 'user-data'), '--extensions-dir', path.join(dir, 'extensions'),
      workspace,
    ], { dir, env: { XDG_CONFIG_HOME: path.join(dir, 'xdg-config'), XDG_DATA_HOME: path.join(dir, 'xdg-data') } });
    await cs.ready(`code-server on port ${p}`, async () => (await request(`http://127.0.0.1:${p}/healthz`)).status === 200, { timeout: 60_000 });
    return p;
  });
  await lk.postRoute('/user/john/code', {
    user: 'john', server_name: 'code', target: `http://127.0.0.1:${port}`, strip_prefix: true, session: 'code-1',
  });
});

after(async () => {
  await browser?.close();
  await stopAll();
});

/** WebSockets open through latchkey, from its metrics. */
async function activeWebSockets() {
  const m = (await request(`${lk.apiBase}/metrics`)).body.match(/^latchkey_websockets_active (\d+)$/m);
  assert.ok(m, 'latchkey_websockets_active in /metrics');
  return Number(m[1]);
}

/** Opens the workbench and waits until the explorer lists the workspace over the WebSocket. */
async function openWorkbench(page) {
  const sockets = watchSockets(page, '/user/john/code/');
  await page.goto(lk.url('/user/john/code/'));
  await page.locator('.monaco-workbench').waitFor({ timeout: 90_000 });
  await page.locator('.explorer-folders-view .monaco-list-row', { hasText: 'hello.py' }).waitFor({ timeout: 90_000 });
  await waitFor('a live code-server WebSocket', () => sockets.some((s) => !s.closed && s.frames > 0));
  return sockets;
}

test('code-server\'s workbench loads through latchkey with its WebSockets, and revoking nina closes hers', async () => {
  const john = await person(browser, lk);
  const johnPage = await john.newPage();
  await signIn(johnPage, lk, 'john', { next: '/user/john/code/' });
  const johnSockets = await openWorkbench(johnPage);
  assert.ok(johnSockets.every((s) => s.url.startsWith(`ws://127.0.0.1:${lk.port}/user/john/code/`)), JSON.stringify(johnSockets));
  // The file opens in the editor, its text sent over the WebSocket.
  await johnPage.locator('.explorer-folders-view .monaco-list-row', { hasText: 'hello.py' }).click();
  await johnPage.locator('.monaco-editor .view-lines', { hasText: 'hello from john' }).waitFor({ timeout: 60_000 });
  await shot(johnPage, dir, 'code-server-workbench');

  // john shares the tool with nina; she gets the same workbench.
  await johnPage.goto(lk.hub('sharing/john/code'));
  const share = johnPage.locator('section[aria-labelledby=direct]');
  await share.getByLabel('Name').fill('nina');
  await share.getByRole('button', { name: 'Share' }).click();
  await johnPage.getByRole('status').filter({ hasText: 'Shared with nina as use.' }).waitFor();
  const baseline = await activeWebSockets();
  const nina = await person(browser, lk);
  const ninaPage = await nina.newPage();
  await signIn(ninaPage, lk, 'nina', { next: '/user/john/code/' });
  const ninaSockets = await openWorkbench(ninaPage);
  assert.ok((await activeWebSockets()) > baseline, 'latchkey counts nina\'s WebSockets');

  await johnPage.goto(lk.hub('sharing/john/code'));
  await johnPage.getByRole('button', { name: 'Revoke nina' }).click();
  await johnPage.getByRole('status').filter({ hasText: 'nina no longer has access.' }).waitFor();
  // Her WebSockets close at once: latchkey's count of open WebSockets falls back to what it was
  // before she came (the browser does not report every close: some of the workbench's sockets
  // live in workers), the sockets of her window are seen closing, and the workbench's attempts
  // to reconnect are refused.
  await waitFor('latchkey to close nina\'s WebSockets', async () => (await activeWebSockets()) <= baseline, { timeout: 10_000 });
  const live = ninaSockets.filter((s) => s.frames > 0);
  await waitFor('the browser to see her WebSockets close', () => live.some((s) => s.closed), { timeout: 10_000 });
  await waitFor('a refused reconnection', () => ninaSockets.some((s) => /403/.test(s.error || '')), { timeout: 30_000 });
  const resp = await ninaPage.goto(lk.url('/user/john/code/'));
  assert.equal(resp.status(), 403);
  await ninaPage.getByRole('heading', { name: 'Access ended' }).waitFor();
  // john's own WebSockets were not touched.
  assert.ok(johnSockets.some((s) => !s.closed), 'john keeps his WebSockets');
  await john.close();
  await nina.close();
});
