// The story against real JupyterLab in headless Chromium: john's notebook server behind
// latchkey, its token injected by latchkey; nina accepts an invite, runs a cell over the kernel
// WebSocket, is limited by role view, and loses access (WebSockets closed, next request refused,
// a page that says why) when john revokes her and when his server's session changes.
// Then the cross-site protection latchkey adds in front of a token-authenticated Jupyter.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, test } from 'node:test';

import {
  launchBrowser, openNotebookAt, person, randomToken, request, runCellIn, sessionCookie, shot,
  signIn, startJupyterLab, startLatchkey, stopAll, waitFor, watchSockets, websocketHandshake,
  workDir,
} from './harness.mjs';

const dir = workDir('jupyter');
let lk;
let lab;
let browser;
let john;
let nina;
let johnPage;
let ninaPage;

const route = (session) => ({
  user: 'john',
  server_name: '',
  target: lab.target,
  upstream_headers: { Authorization: `token ${lab.token}` },
  session,
});

before(async () => {
  browser = await launchBrowser();
  [lk, lab] = await Promise.all([
    startLatchkey(dir),
    startJupyterLab(dir, { baseUrl: '/user/john/', token: randomToken() }),
  ]);
  await lk.postRoute('/user/john', route('john-session-1'));
  john = await person(browser, lk);
  nina = await person(browser, lk);
  johnPage = await john.newPage();
  ninaPage = await nina.newPage();
  await Promise.all([signIn(johnPage, lk, 'john'), signIn(ninaPage, lk, 'nina')]);
});

after(async () => {
  await browser?.close();
  await stopAll();
});

/** john creates an invite link in his sharing menu and copies it. */
async function johnCreatesLink(role) {
  await johnPage.goto(lk.hub('sharing/john/'));
  await johnPage.locator('section[aria-labelledby=create] select[name=role]').selectOption(role);
  await johnPage.getByRole('button', { name: 'Create link' }).click();
  const url = await johnPage.locator('#new-link-url').inputValue();
  assert.match(url, new RegExp(`^${lk.base}${lk.prefix}accept-share\\?code=[A-Za-z0-9_-]{43}$`));
  return url;
}

/** nina opens the link, reads the accept page, and accepts with the keyboard. */
async function ninaAccepts(link, role, shotName) {
  await ninaPage.goto(link);
  await assert.doesNotReject(ninaPage.getByRole('heading', { name: 'john invites you' }).waitFor());
  const facts = await ninaPage.locator('dl.facts').innerText();
  assert.match(facts, /john's server/);
  assert.match(facts, new RegExp(`Role\\s+${role}`));
  assert.match(facts, /Link expires\s+in (1 h 0 min|59 min)/);
  if (shotName) await shot(ninaPage, dir, shotName);
  // Tab to the Accept button, as a keyboard user would, and press Enter.
  for (let i = 0; i < 15; i += 1) {
    await ninaPage.keyboard.press('Tab');
    if (await ninaPage.evaluate(() => document.activeElement?.textContent?.trim() === 'Accept')) break;
  }
  assert.equal(await ninaPage.evaluate(() => document.activeElement?.textContent?.trim()), 'Accept');
  await Promise.all([
    ninaPage.waitForURL((u) => u.pathname.startsWith('/user/john/')),
    ninaPage.keyboard.press('Enter'),
  ]);
}

/** Opens the notebook in JupyterLab (fresh workspace) and waits for the editor. */
const openNotebook = (page) => openNotebookAt(page, lk.url('/user/john/lab/tree/story.ipynb?reset'));
const runCell = (page, code, expected) => runCellIn(page, code, expected, dir);

test('nina accepts john\'s invite and runs a cell in his JupyterLab through latchkey', async () => {
  const link = await johnCreatesLink('use');
  await shot(johnPage, dir, 'sharing-new-link');
  const kernels = watchSockets(ninaPage, '/user/john/api/kernels/');
  const requests = [];
  ninaPage.on('request', (r) => requests.push(r));
  await ninaAccepts(link, 'use', 'accept-page');
  // Jupyter answered through latchkey and sent her to JupyterLab.
  await ninaPage.locator('#jp-main-dock-panel').waitFor({ timeout: 60_000 });
  await openNotebook(ninaPage);
  await runCell(ninaPage, 'print(6*7)', '42');
  await shot(ninaPage, dir, 'jupyterlab-cell-output');
  assert.ok(kernels.some((s) => s.url.includes('/channels') && s.frames > 0 && !s.closed),
    `an open kernel WebSocket that carried messages: ${JSON.stringify(kernels)}`);
  // The browser never saw Jupyter's token: no URL or response header carried it.
  for (const r of requests) assert.ok(!r.url().includes(lab.token), `token in ${r.url()}`);
  const headers = await Promise.all(requests.map(async (r) => JSON.stringify(await (await r.response())?.allHeaders() ?? {})));
  for (const h of headers) assert.ok(!h.includes(lab.token), 'token in a response header');
  const html = await ninaPage.content();
  assert.ok(!html.includes(lab.token), 'token in the page');
  // JupyterLab's page config, which would carry the token, has it blanked (harness.JUPYTER_BEHIND_LATCHKEY).
  const pageConfig = JSON.parse(await ninaPage.locator('#jupyter-config-data').textContent());
  assert.equal(pageConfig.token, '');

  // john's sharing menu lists nina, how she came in, and that she is connected.
  await johnPage.goto(lk.hub('sharing/john/'));
  const row = johnPage.locator('section[aria-labelledby=people] tbody tr', { hasText: 'nina' });
  assert.match(await row.innerText(), /use[\s\S]*accepted an invite link[\s\S]*connected/);
  assert.doesNotMatch(await row.innerText(), /not connected/);
  const links = await johnPage.locator('section[aria-labelledby=links] tbody').innerText();
  assert.match(links, /1 time, last/);
  await shot(johnPage, dir, 'sharing-nina-connected');
});

test('when john revokes nina her kernel WebSocket closes and latchkey tells her why', async () => {
  const kernels = watchSockets(ninaPage, '/user/john/api/kernels/');
  await openNotebook(ninaPage);
  await runCell(ninaPage, 'x = 20 + 1; print(x * 2)', '42');
  const open = () => kernels.filter((s) => s.url.includes('/channels') && !s.closed);
  assert.ok(open().length > 0, 'a kernel WebSocket is open before the revocation');

  await johnPage.goto(lk.hub('sharing/john/'));
  await johnPage.getByRole('button', { name: 'Revoke nina' }).click();
  await johnPage.getByRole('status').filter({ hasText: 'nina no longer has access.' }).waitFor();
  await shot(johnPage, dir, 'sharing-after-revoke');

  await waitFor('nina\'s kernel WebSockets to close', () => kernels.length > 0 && open().length === 0, { timeout: 10_000 });
  // Her next request is refused, and the page explains it.
  const resp = await ninaPage.goto(lk.url('/user/john/lab'));
  assert.equal(resp.status(), 403);
  await ninaPage.getByRole('heading', { name: 'Access ended' }).waitFor();
  assert.match(await ninaPage.locator('main').innerText(), /The owner revoked your access to john's server\./);
  await shot(ninaPage, dir, 'error-access-revoked');
});

test('with role view nina can browse john\'s notebooks but cannot run or save', async () => {
  // JupyterLab will try to use a kernel for the notebook: start one (POST api/sessions), or
  // connect to the one john's session left running (its channels WebSocket).
  const starts = [];
  ninaPage.on('response', (r) => {
    if (r.request().method() === 'POST' && r.url().includes('/user/john/api/sessions')) starts.push(r.status());
  });
  const kernelSockets = watchSockets(ninaPage, '/user/john/api/kernels/');
  await ninaAccepts(await johnCreatesLink('view'), 'view', 'accept-page-view');
  await ninaPage.locator('#jp-main-dock-panel').waitFor({ timeout: 60_000 });
  // She can browse: the file browser lists the notebook, and the notebook opens.
  await ninaPage.locator('.jp-DirListing-item', { hasText: 'story.ipynb' }).first().waitFor();
  await ninaPage.goto(lk.url('/user/john/lab/tree/story.ipynb?reset'));
  await ninaPage.locator('.jp-NotebookPanel .jp-Cell').first().waitFor({ timeout: 60_000 });
  // It tried, and latchkey refused every attempt.
  await waitFor('JupyterLab\'s attempt to reach a kernel', () => starts.length + kernelSockets.length > 0, { timeout: 60_000 });
  assert.ok(starts.every((st) => st === 403), `kernel starts: ${starts}`);
  await waitFor('the kernel WebSockets to be refused', () => kernelSockets.every((ks) => ks.closed || ks.error));
  assert.ok(kernelSockets.every((ks) => ks.frames === 0), 'no kernel message reached her');
  await shot(ninaPage, dir, 'jupyterlab-view-only');
  // She cannot start a kernel, open its WebSocket, or save: latchkey answers 403 "View only"
  // before Jupyter sees the request.
  const results = await ninaPage.evaluate(async () => {
    const base = '/user/john/api/';
    const get = await fetch(`${base}contents/story.ipynb?content=0`);
    const save = await fetch(`${base}contents/story.ipynb`, {
      method: 'PUT', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ type: 'file', format: 'text', content: 'overwritten' }),
    });
    const start = await fetch(`${base}sessions`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ path: 'story.ipynb', type: 'notebook', kernel: { name: 'python3' } }),
    });
    const ws = await new Promise((resolve) => {
      const s = new WebSocket(`ws://${location.host}${base}events/subscribe`);
      s.onopen = () => { s.close(); resolve('open'); };
      s.onerror = () => resolve('refused');
    });
    return { get: get.status, save: save.status, saveText: await save.text(), start: start.status, ws };
  });
  assert.equal(results.get, 200);
  assert.equal(results.save, 403);
  assert.match(results.saveText, /role view/);
  assert.equal(results.start, 403);
  assert.equal(results.ws, 'refused');
  assert.match(fs.readFileSync(path.join(lab.root, 'story.ipynb'), 'utf8'), /"nbformat": 4/);
  // A view-only page for a form post.
  await ninaPage.evaluate(() => {
    const f = document.createElement('form');
    f.method = 'post';
    f.action = '/user/john/api/contents';
    document.body.append(f);
    f.submit();
  });
  await ninaPage.getByRole('heading', { name: 'View only' }).waitFor();
  assert.match(await ninaPage.locator('main').innerText(), /You may look at john's server but not change it/);
  await shot(ninaPage, dir, 'error-view-only');
});

test('a new session of john\'s server closes nina\'s kernel WebSocket and voids her access', async () => {
  // A use link raises her role (re-accepting never lowers one).
  await ninaAccepts(await johnCreatesLink('use'), 'use');
  const kernels = watchSockets(ninaPage, '/user/john/api/kernels/');
  await openNotebook(ninaPage);
  await runCell(ninaPage, 'print(7*6)', '42');
  const open = () => kernels.filter((s) => s.url.includes('/channels') && !s.closed);
  assert.ok(open().length > 0);

  // john's server restarts: its spawner posts the route again with a new session.
  await lk.postRoute('/user/john', route('john-session-2'));
  await waitFor('nina\'s kernel WebSockets to close', () => open().length === 0, { timeout: 10_000 });
  const resp = await ninaPage.goto(lk.url('/user/john/lab'));
  assert.equal(resp.status(), 403);
  await ninaPage.getByRole('heading', { name: 'Access ended' }).waitFor();
  assert.match(await ninaPage.locator('main').innerText(), /The owner's server restarted/);
  await shot(ninaPage, dir, 'error-server-restarted');
  // john still works in his notebook, and his sharing menu is empty.
  await johnPage.goto(lk.hub('sharing/john/'));
  assert.match(await johnPage.locator('section[aria-labelledby=people]').innerText(), /Nobody but you/);
  assert.match(await johnPage.locator('section[aria-labelledby=links]').innerText(), /No active links/);
  await openNotebook(johnPage);
  await runCell(johnPage, 'print(6*7)', '42');
});

test('latchkey refuses cross-site writes and WebSockets that Jupyter, with the token injected, would accept', async () => {
  const cookie = await sessionCookie(john);
  const evil = 'http://evil.example';
  const body = JSON.stringify({ type: 'file', ext: '.txt' });
  const files = () => fs.readdirSync(lab.root).sort().join(',');
  const beforeFiles = files();

  // The control: Jupyter itself, given its token, accepts both (it skips XSRF and Origin checks).
  const direct = await request(`${lab.target}/user/john/api/contents`, {
    method: 'POST', headers: { Authorization: `token ${lab.token}`, Origin: evil, 'Content-Type': 'application/json' }, body,
  });
  assert.equal(direct.status, 201, 'Jupyter with a token accepts a foreign Origin');
  fs.rmSync(path.join(lab.root, JSON.parse(direct.body).name));
  const kernel = JSON.parse((await request(`${lab.target}/user/john/api/kernels`, {
    method: 'POST', headers: { Authorization: `token ${lab.token}` }, body: '{}',
  })).body);
  const channels = `/user/john/api/kernels/${kernel.id}/channels`;
  assert.equal((await websocketHandshake(`${lab.target}${channels}`, { Authorization: `token ${lab.token}`, Origin: evil })).status, 101);

  // Through latchkey, with john's own cookie: a foreign Origin is refused before Jupyter.
  const post = await request(lk.url('/user/john/api/contents'), {
    method: 'POST', headers: { Cookie: cookie, Origin: evil, 'Content-Type': 'application/json' }, body,
  });
  assert.equal(post.status, 403);
  assert.match(post.body, /Cross-site request refused|another site/);
  const fetchSite = await request(lk.url('/user/john/api/contents'), {
    method: 'POST', headers: { Cookie: cookie, 'Sec-Fetch-Site': 'cross-site', 'Content-Type': 'application/json' }, body,
  });
  assert.equal(fetchSite.status, 403);
  assert.equal(files(), beforeFiles, 'no file was created');
  const ws = await websocketHandshake(lk.url(channels), { Cookie: cookie, Origin: evil });
  assert.equal(ws.status, 403);
  // The same requests from latchkey's own origin pass (so the refusals above are about Origin).
  const own = await request(lk.url('/user/john/api/contents'), {
    method: 'POST', headers: { Cookie: cookie, Origin: lk.base, 'Content-Type': 'application/json' }, body,
  });
  assert.equal(own.status, 201);
  assert.equal((await websocketHandshake(lk.url(channels), { Cookie: cookie, Origin: lk.base })).status, 101);

  // In the browser: a page on another origin of the same host (so the SameSite=Lax cookie is
  // sent) posts a form to Jupyter through latchkey and opens the kernel WebSocket.
  const attacker = http.createServer((req, res) => {
    res.setHeader('Content-Type', 'text/html');
    res.end(`<!doctype html><title>elsewhere</title>
      <form id="f" method="post" action="${lk.url('/user/john/api/contents')}"><input name="type" value="file"></form>`);
  });
  await new Promise((r) => attacker.listen(0, '127.0.0.1', r));
  try {
    const page = await john.newPage();
    await page.goto(`http://127.0.0.1:${attacker.address().port}/`);
    const wsResult = await page.evaluate((url) => new Promise((resolve) => {
      const s = new WebSocket(url);
      s.onopen = () => { s.close(); resolve('open'); };
      s.onerror = () => resolve('refused');
    }), lk.url(channels).replace('http:', 'ws:'));
    assert.equal(wsResult, 'refused');
    const [resp] = await Promise.all([page.waitForNavigation(), page.evaluate(() => document.getElementById('f').submit())]);
    assert.equal(resp.status(), 403);
    await page.getByRole('heading', { name: 'Cross-site request refused' }).waitFor();
    await shot(page, dir, 'error-cross-site');
    assert.equal(files().split(',').length, beforeFiles.split(',').length + 1, 'only the same-origin POST created a file');
    await page.close();
  } finally {
    attacker.close();
  }
});
