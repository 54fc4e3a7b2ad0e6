// Test rig for the end-to-end suite: real processes (latchkey, JupyterLab, JupyterHub,
// code-server) on free loopback ports, readiness by polling, headless Chromium through
// playwright-core, screenshots and logs under target/e2e-artifacts/.
//
// Every process is started in its own process group and stopped (group and all) when its test
// ends, or killed when the test process exits.

import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const LATCHKEY_BIN = process.env.LATCHKEY_BIN || path.join(REPO, 'target/debug/latchkey');
export const VENV = process.env.LATCHKEY_E2E_VENV || path.join(REPO, '.venv');
export const CODE_SERVER_BIN = path.join(REPO, 'tests/e2e/code-server/node_modules/.bin/code-server');
export const CHROMIUM = process.env.LATCHKEY_E2E_CHROMIUM || '/usr/bin/chromium';
export const ARTIFACTS = process.env.LATCHKEY_E2E_ARTIFACTS || path.join(REPO, 'target/e2e-artifacts');
export const API_TOKEN = 'e2e-route-api-token-' + crypto.randomBytes(12).toString('hex');

/** Headless Chromium flags that work in a container as root with no GPU and no network. */
export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];

// ---------------------------------------------------------------------------------------------
// Small utilities

/** A scratch directory for one test, under the artifacts folder so that logs survive. */
export function workDir(name) {
  const dir = path.join(ARTIFACTS, name);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

/** A loopback port that was free a moment ago. */
export async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Polls `check` until it returns a truthy value (which is returned). Exceptions count as "not
 * yet"; the last one is reported on timeout. This is the suite's only way of waiting.
 */
export async function waitFor(what, check, { timeout = 30_000, interval = 100 } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
      last = undefined;
    } catch (e) {
      if (e.fatal) throw e;
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, interval));
  }
}

/**
 * One HTTP request with full control of the headers (fetch refuses some, such as Origin).
 * Resolves to { status, headers, body } and never follows redirects.
 */
export function request(url, { method = 'GET', headers = {}, body } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.setTimeout(30_000, () => req.destroy(new Error(`${method} ${url} timed out`)));
    if (body !== undefined) req.write(body);
    req.end();
  });
}

/**
 * Sends a WebSocket handshake and reports the answer's status: 101 when the upgrade was
 * accepted (the socket is then closed at once), otherwise the refusal's status and body.
 */
export function websocketHandshake(url, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, {
      headers: {
        Connection: 'Upgrade',
        Upgrade: 'websocket',
        'Sec-WebSocket-Version': '13',
        'Sec-WebSocket-Key': crypto.randomBytes(16).toString('base64'),
        ...headers,
      },
    });
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      resolve({ status: res.statusCode, body: '' });
    });
    req.on('response', (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('error', reject);
    req.setTimeout(30_000, () => req.destroy(new Error(`WebSocket handshake to ${url} timed out`)));
    req.end();
  });
}

export const randomToken = () => crypto.randomBytes(24).toString('hex');

/**
 * Runs `start` (which picks free ports and starts a server) again, up to three times, when the
 * server could not bind its port: another process of the parallel suite (a kernel, a browser)
 * may take a port between freePort() and the bind.
 */
export async function withFreshPorts(start, attempts = 3) {
  for (let i = 1; ; i += 1) {
    try {
      return await start();
    } catch (e) {
      if (i >= attempts || !/already in use|EADDRINUSE|no available port/i.test(e.message)) throw e;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Processes

const running = new Set();

function killAll(signal) {
  for (const p of running) {
    try {
      process.kill(-p.child.pid, signal);
    } catch {
      // already gone
    }
  }
}
process.on('exit', () => killAll('SIGKILL'));
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    killAll('SIGKILL');
    process.exit(130);
  });
}

/** Stops every process this test file started that is still running (for `after` hooks). */
export async function stopAll() {
  await Promise.all([...running].map((p) => p.stop(30_000)));
}

/** A child process in its own process group, its output in `<dir>/<name>.log`. */
export class Proc {
  constructor(name, cmd, args, { dir, env = {}, cwd } = {}) {
    this.name = name;
    this.logPath = path.join(dir, `${name}.log`);
    const out = fs.openSync(this.logPath, 'a');
    this.child = spawn(cmd, args, {
      cwd: cwd || dir,
      env: { ...process.env, ...env },
      detached: true,
      stdio: ['ignore', out, out],
    });
    fs.closeSync(out);
    this.exitCode = undefined;
    this.exited = new Promise((resolve) => {
      this.child.on('exit', (code, signal) => {
        this.exitCode = code ?? signal;
        running.delete(this);
        resolve(this.exitCode);
      });
      this.child.on('error', (e) => {
        this.exitCode = `spawn error: ${e.message}`;
        running.delete(this);
        resolve(this.exitCode);
      });
    });
    running.add(this);
  }

  get alive() {
    return this.exitCode === undefined;
  }

  /** The last lines of the log, for failure messages. */
  tail(lines = 30) {
    try {
      return fs.readFileSync(this.logPath, 'utf8').split('\n').slice(-lines).join('\n');
    } catch {
      return '';
    }
  }

  log() {
    return fs.readFileSync(this.logPath, 'utf8');
  }

  /** Waits until `check` passes, failing at once (with the log) if the process dies. */
  async ready(what, check, opts) {
    try {
      return await waitFor(what, async () => {
        if (!this.alive) {
          throw Object.assign(new Error(`${this.name} exited (${this.exitCode}) while waiting for ${what}`), { fatal: true });
        }
        return check();
      }, opts);
    } catch (e) {
      throw new Error(`${e.message}\n--- last lines of ${this.logPath}:\n${this.tail()}`);
    }
  }

  /** SIGTERM to the whole group, then SIGKILL if it has not exited within `grace` ms. */
  async stop(grace = 10_000) {
    if (!this.alive) return this.exitCode;
    try {
      process.kill(-this.child.pid, 'SIGTERM');
    } catch {
      return this.exitCode;
    }
    const timer = new Promise((r) => setTimeout(r, grace, 'timeout'));
    if ((await Promise.race([this.exited, timer])) === 'timeout') {
      try {
        process.kill(-this.child.pid, 'SIGKILL');
      } catch {
        // gone in between
      }
      await this.exited;
    }
    return this.exitCode;
  }
}

// ---------------------------------------------------------------------------------------------
// latchkey

let hashes;
/** Passwords and argon2 hashes for the suite's users, made once per test process. */
export function users() {
  if (hashes) return hashes;
  if (!fs.existsSync(LATCHKEY_BIN)) {
    throw new Error(`${LATCHKEY_BIN} is missing: build it with \`cargo build\` (scripts/test does)`);
  }
  hashes = {};
  for (const [name, groups] of [['john', []], ['nina', ['analysts']], ['alice', []]]) {
    const password = `${name}-pw-${randomToken().slice(0, 12)}`;
    const r = spawnSync(LATCHKEY_BIN, ['hash-password'], { input: password, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`latchkey hash-password failed: ${r.stderr}`);
    hashes[name] = { name, password, hash: r.stdout.trim(), groups };
  }
  return hashes;
}

/**
 * Starts `latchkey serve` with a generated config on free ports and waits for its liveness
 * checks. `hubPrefix` moves latchkey's pages and API; `login` sets the sign-in rate limit;
 * `oidc` turns on sign-in through an OpenID Connect provider.
 */
export function startLatchkey(dir, opts = {}) {
  return withFreshPorts(() => startLatchkeyOnce(dir, opts));
}

async function startLatchkeyOnce(dir, {
  name = 'latchkey', hubPrefix = '/hub/', login = {}, upstreamTimeout = 60, storeUrl = 'memory://',
  userDomain, oidc,
} = {}) {
  const pub = await freePort();
  const api = await freePort();
  const u = users();
  const toml = [
    '[server]',
    `listen = "127.0.0.1:${pub}"`,
    `hub_prefix = "${hubPrefix}"`,
    `upstream_timeout = ${upstreamTimeout}`,
    // Host-based routing: latchkey's pages on userDomain, each user's servers on a host below.
    ...(userDomain ? [`public_url = "http://${userDomain}:${pub}"`, `user_domain = "${userDomain}"`] : []),
    '',
    '[api]',
    `listen = "127.0.0.1:${api}"`,
    `token = "${API_TOKEN}"`,
    '',
    '[store]',
    `url = "${storeUrl}"`,
    'timeout_ms = 500',
    '',
    '[login]',
    `max_failures = ${login.maxFailures ?? 1000}`,
    `failure_window = ${login.failureWindow ?? 60}`,
    '',
    // Sign-in through an OpenID Connect provider: { issuer, clientId, clientSecret, scopes,
    // allowedGroups, displayName, logoutUrl }; the provider sends browsers back to this listener.
    ...(oidc ? [
      '[oidc]',
      `issuer = "${oidc.issuer}"`,
      `client_id = "${oidc.clientId}"`,
      `client_secret = "${oidc.clientSecret}"`,
      `redirect_url = "http://127.0.0.1:${pub}${hubPrefix}oauth_callback"`,
      `scopes = ${JSON.stringify(oidc.scopes ?? ['profile', 'groups'])}`,
      `allowed_groups = ${JSON.stringify(oidc.allowedGroups ?? [])}`,
      `display_name = "${oidc.displayName ?? 'Test ID'}"`,
      ...(oidc.logoutUrl ? [`logout_url = "${oidc.logoutUrl}"`] : []),
      '',
    ] : []),
    ...Object.values(u).flatMap((x) => [
      '[[users]]',
      `name = "${x.name}"`,
      `password_hash = "${x.hash}"`,
      `groups = ${JSON.stringify(x.groups)}`,
      '',
    ]),
  ].join('\n');
  const config = path.join(dir, `${name}.toml`);
  fs.writeFileSync(config, toml);
  const proc = new Proc(name, LATCHKEY_BIN, ['serve', '--config', config, '--drain', '2'], {
    dir,
    env: { RUST_LOG: 'info' },
  });
  const lk = new Latchkey(proc, pub, api, hubPrefix);
  await proc.ready(`${name} on port ${pub}`, async () => {
    const a = await request(`${lk.base}/healthz`);
    const b = await request(`${lk.apiBase}/_chp_healthz`);
    return a.status === 200 && b.status === 200;
  });
  // Browsers use the public URL's host (mapped to 127.0.0.1 with hostResolverArgs).
  if (userDomain) lk.base = `http://${userDomain}:${pub}`;
  return lk;
}

export class Latchkey {
  constructor(proc, pub, api, hubPrefix) {
    this.proc = proc;
    this.port = pub;
    this.base = `http://127.0.0.1:${pub}`;
    this.apiBase = `http://127.0.0.1:${api}`;
    this.apiUrl = this.apiBase;
    this.prefix = hubPrefix;
  }

  /** A URL on the public listener. */
  url(p) {
    return this.base + p;
  }

  /** A URL of one of latchkey's pages, under the hub prefix: hub('login'). */
  hub(p) {
    return this.base + this.prefix + p;
  }

  async routeApi(method, p, body) {
    const r = await request(`${this.apiBase}/api/routes${p}`, {
      method,
      headers: { Authorization: `token ${API_TOKEN}`, 'Content-Type': 'text/plain;charset=utf-8' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: r.status, json: r.body ? JSON.parse(r.body) : null };
  }

  async postRoute(p, body) {
    const r = await this.routeApi('POST', p, body);
    if (r.status !== 201) throw new Error(`POST /api/routes${p} answered ${r.status}`);
  }

  async routes() {
    return (await this.routeApi('GET', '')).json;
  }

  stop() {
    return this.proc.stop();
  }
}

// ---------------------------------------------------------------------------------------------
// Jupyter

/** Fails with a clear message when a program the suite needs was not installed. */
export function need(file, how) {
  if (!fs.existsSync(file)) {
    throw new Error(`${file} is missing. ${how}`);
  }
  return file;
}

const NEED_VENV = 'Run ./scripts/test, which creates the venv with JupyterLab and JupyterHub.';

/** A notebook with one empty code cell and the venv's python3 kernel. */
export function writeNotebook(file) {
  fs.writeFileSync(file, JSON.stringify({
    cells: [{ cell_type: 'code', execution_count: null, id: 'c1', metadata: {}, outputs: [], source: [] }],
    metadata: {
      kernelspec: { display_name: 'Python 3 (ipykernel)', language: 'python', name: 'python3' },
      language_info: { name: 'python' },
    },
    nbformat: 4,
    nbformat_minor: 5,
  }, null, 1));
}

/**
 * The Jupyter server configuration for running behind latchkey with the token injected:
 * JupyterLab otherwise writes the server's token into every page it serves (page_config
 * "token"), so anyone who may load a page (a sharee with role view, or one revoked later)
 * would learn it. The README shows the same snippet.
 */
export const JUPYTER_BEHIND_LATCHKEY = `# latchkey injects the token (route upstream_headers); never hand it to the browser.
def _hide_token(handler, page_config):
    page_config["token"] = ""
    return page_config

c.ServerApp.tornado_settings = {"page_config_hook": _hide_token}
`;

/**
 * Environment that keeps Jupyter's state inside `dir` (no shared ~/.jupyter, no workspace
 * restored from an earlier run) and switches off JupyterLab's news and update toasts.
 */
export function jupyterEnv(dir) {
  const settings = path.join(dir, 'lab-settings');
  const notif = path.join(settings, '@jupyterlab/apputils-extension');
  fs.mkdirSync(notif, { recursive: true });
  fs.writeFileSync(path.join(notif, 'notification.jupyterlab-settings'),
    JSON.stringify({ fetchNews: 'false', checkForUpdates: false }));
  for (const d of ['jupyter-config', 'jupyter-runtime', 'lab-workspaces', 'ipython']) {
    fs.mkdirSync(path.join(dir, d), { recursive: true });
  }
  fs.writeFileSync(path.join(dir, 'jupyter-config', 'jupyter_server_config.py'), JUPYTER_BEHIND_LATCHKEY);
  return {
    JUPYTER_CONFIG_DIR: path.join(dir, 'jupyter-config'),
    JUPYTER_RUNTIME_DIR: path.join(dir, 'jupyter-runtime'),
    JUPYTERLAB_SETTINGS_DIR: settings,
    JUPYTERLAB_WORKSPACES_DIR: path.join(dir, 'lab-workspaces'),
    IPYTHONDIR: path.join(dir, 'ipython'),
    JUPYTER_PLATFORM_DIRS: '1',
    PATH: `${path.join(VENV, 'bin')}:${process.env.PATH}`,
  };
}

/** Starts JupyterLab with `base_url`, token auth and a notebook folder; waits until it serves. */
export function startJupyterLab(dir, opts) {
  return withFreshPorts(() => startJupyterLabOnce(dir, opts));
}

async function startJupyterLabOnce(dir, { baseUrl, token, name = 'jupyterlab' }) {
  const jupyter = need(path.join(VENV, 'bin/jupyter'), NEED_VENV);
  const port = await freePort();
  const root = path.join(dir, 'notebooks');
  fs.mkdirSync(root, { recursive: true });
  writeNotebook(path.join(root, 'story.ipynb'));
  const proc = new Proc(name, jupyter, [
    'lab', '--no-browser', '--allow-root', '--ip=127.0.0.1', `--port=${port}`,
    `--ServerApp.base_url=${baseUrl}`, `--IdentityProvider.token=${token}`,
    `--ServerApp.root_dir=${root}`, '--ServerApp.port_retries=0',
  ], { dir, env: jupyterEnv(dir) });
  const target = `http://127.0.0.1:${port}`;
  await proc.ready(`JupyterLab on port ${port}`, async () => {
    const r = await request(`${target}${baseUrl}api/status`, { headers: { Authorization: `token ${token}` } });
    return r.status === 200;
  }, { timeout: 60_000 });
  return { proc, port, target, root, token, baseUrl };
}

// ---------------------------------------------------------------------------------------------
// The browser

export async function launchBrowser(extraArgs = []) {
  need(CHROMIUM, 'Install Debian\'s chromium (scripts/test does: apt-get install chromium).');
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: [...CHROMIUM_ARGS, ...extraArgs] });
}

/** Chromium flags that resolve a domain and every host below it to this machine. */
export const hostResolverArgs = (domain) => [`--host-resolver-rules=MAP ${domain} 127.0.0.1,MAP *.${domain} 127.0.0.1`];

/** A browser context (one person) with a fixed viewport for comparable screenshots. */
export async function person(browser, lk) {
  const ctx = await browser.newContext({
    viewport: { width: 1200, height: 800 },
    baseURL: lk.base,
  });
  ctx.setDefaultTimeout(30_000);
  ctx.setDefaultNavigationTimeout(60_000);
  return ctx;
}

/** Signs in through the sign-in form, by keyboard as a person would. */
export async function signIn(page, lk, who, { next } = {}) {
  const u = users()[who];
  const q = next ? `?next=${encodeURIComponent(next)}` : '';
  await page.goto(lk.hub(`login${q}`));
  await page.locator('#username').fill(u.name);
  await page.keyboard.press('Tab');
  await page.keyboard.type(u.password);
  await Promise.all([page.waitForURL((url) => url.pathname !== `${lk.prefix}login`), page.keyboard.press('Enter')]);
}

/** The value of latchkey's session cookie in a browser context (for scripted requests). */
export async function sessionCookie(ctx) {
  const c = (await ctx.cookies()).find((x) => x.name === 'latchkey-session');
  if (!c) throw new Error('not signed in');
  return `latchkey-session=${c.value}`;
}

/** Saves a full-page screenshot as `<dir>/<name>.png` (keyboard focus moved off first). */
export async function shot(page, dir, name) {
  const file = path.join(dir, `${name}.png`);
  await page.evaluate(() => document.activeElement?.blur?.()).catch(() => {});
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

/** Opens a notebook URL in JupyterLab and waits for its editor. */
export async function openNotebookAt(page, url) {
  await page.goto(url);
  await page.locator('.jp-NotebookPanel .jp-Cell .cm-content').first().waitFor({ timeout: 60_000 });
}

/**
 * Waits until the notebook's kernel is connected (over its WebSocket) and idle, types `code`
 * into the last cell, runs it with Shift+Enter, and waits for `expected` in an output.
 */
export async function runCellIn(page, code, expected, dir) {
  await page.locator('#jp-main-statusbar').getByText(/\| Idle/).waitFor({ timeout: 90_000 });
  await page.locator('.jp-NotebookPanel .jp-Cell .cm-content').last().click();
  await page.keyboard.type(code);
  await page.keyboard.press('Shift+Enter');
  try {
    await page.locator('.jp-OutputArea-output', { hasText: expected }).first().waitFor({ timeout: 60_000 });
  } catch (e) {
    await shot(page, dir, `failed-run-cell-${Date.now()}`);
    throw e;
  }
}

/** Records the WebSockets a page opens whose URL contains `part`, with their close state. */
export function watchSockets(page, part) {
  const sockets = [];
  page.on('websocket', (ws) => {
    if (!ws.url().includes(part)) return;
    const rec = { url: ws.url(), closed: false, frames: 0, error: null, opened: Date.now() };
    ws.on('framereceived', () => { rec.frames += 1; });
    ws.on('socketerror', (e) => { rec.error = String(e); });
    ws.on('close', () => { rec.closed = true; rec.closedAt = Date.now(); });
    sockets.push(rec);
  });
  return sockets;
}

