// JupyterHub 6 drives latchkey as its proxy, unchanged: configurable-http-proxy's REST API on
// latchkey's route API port (ConfigurableHTTPProxy.should_start = False). latchkey moves its own
// pages to /latchkey/ so that /hub/ stays JupyterHub's.
//
// alice is a user of both: she signs in to latchkey (which guards /user/alice/), then to the hub
// (the single-user server's own OAuth). See the README's JupyterHub section for why both.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import {
  API_TOKEN, VENV, freePort, jupyterEnv, launchBrowser, need, openNotebookAt, person, Proc,
  randomToken, request, runCellIn, sessionCookie, shot, signIn, startLatchkey, stopAll, waitFor,
  withFreshPorts, workDir, writeNotebook,
} from './harness.mjs';

const dir = workDir('jupyterhub');
const HUB_PASSWORD = `hub-${randomToken().slice(0, 16)}`;
const SERVICE_TOKEN = randomToken();
let lk;
let hub;
let browser;

/** The hub's REST API, reached through latchkey's public listener (the hub's own route). */
async function hubApi(method, p) {
  const r = await request(lk.url(`/hub/api${p}`), {
    method,
    headers: { Authorization: `token ${SERVICE_TOKEN}` },
  });
  return { status: r.status, json: r.body && r.headers['content-type']?.includes('json') ? JSON.parse(r.body) : r.body };
}

async function aliceReady() {
  return (await hubApi('GET', '/users/alice')).json.servers?.['']?.ready;
}

before(async () => {
  const jupyterhub = need(path.join(VENV, 'bin/jupyterhub'), 'Run ./scripts/test, which creates the venv.');
  browser = await launchBrowser();
  lk = await startLatchkey(dir, { hubPrefix: '/latchkey/' });
  await withFreshPorts(async () => {
    const hubPort = await freePort();
    const home = path.join(dir, 'home');
    fs.mkdirSync(path.join(home, 'alice'), { recursive: true });
    writeNotebook(path.join(home, 'alice', 'story.ipynb'));
    const env = jupyterEnv(dir);
    const config = `
c = get_config()  # noqa
c.JupyterHub.bind_url = "${lk.base}/"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:${hubPort}"
c.ConfigurableHTTPProxy.should_start = False
c.ConfigurableHTTPProxy.api_url = "${lk.apiBase}"
c.ConfigurableHTTPProxy.auth_token = "${API_TOKEN}"
c.JupyterHub.db_url = "sqlite:///${dir}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "${dir}/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = "${dir}/jupyterhub.pid"
c.JupyterHub.last_activity_interval = 2
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = "${HUB_PASSWORD}"
c.Authenticator.allowed_users = {"alice"}
c.JupyterHub.spawner_class = "simple"
c.Spawner.cmd = ["${VENV}/bin/jupyterhub-singleuser"]
c.Spawner.args = ["--allow-root"]
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
# No activity reports from the server itself: last_activity must come from the proxy.
c.Spawner.environment = ${JSON.stringify({ ...env, JUPYTERHUB_ACTIVITY_INTERVAL: '0' })}
c.SimpleLocalProcessSpawner.home_dir_template = "${home}/{username}"
c.JupyterHub.services = [{"name": "e2e", "api_token": "${SERVICE_TOKEN}"}]
c.JupyterHub.load_roles = [{"name": "e2e", "scopes": ["admin:users", "admin:servers", "list:users"], "services": ["e2e"]}]
`;
    fs.writeFileSync(path.join(dir, 'jupyterhub_config.py'), config);
    hub = new Proc('jupyterhub', jupyterhub, ['-f', path.join(dir, 'jupyterhub_config.py')], { dir, env });
    await hub.ready('JupyterHub to register its route with latchkey and answer through it', async () => {
      const routes = await lk.routes();
      if (!routes['/']) return false;
      return (await request(lk.url('/hub/api/'))).status === 200;
    }, { timeout: 90_000 });
  });
});

after(async () => {
  await browser?.close();
  // The hub first: it stops the user servers it spawned and deletes their routes.
  await hub?.stop(30_000);
  await stopAll();
});

test('JupyterHub registers its own route with latchkey and is reachable under /hub/', async () => {
  const routes = await lk.routes();
  assert.equal(routes['/'].jupyterhub, true);
  assert.equal(routes['/'].hub, true);
  assert.match(routes['/'].target, /^http:\/\/127\.0\.0\.1:\d+$/);
  // /hub/ is JupyterHub's; latchkey's own pages live under /latchkey/.
  const hubLogin = await request(lk.url('/hub/login'));
  assert.equal(hubLogin.status, 200);
  assert.match(hubLogin.body, /JupyterHub/);
  const lkLogin = await request(lk.hub('login'));
  assert.equal(lkLogin.status, 200);
  assert.match(lkLogin.body, /action="\/latchkey\/login/);
});

test('a user\'s server started by JupyterHub gets a route, is proxied, reports activity, and its stop voids its grants', async () => {
  // The hub starts alice's server and posts its route to latchkey.
  const start = await hubApi('POST', '/users/alice/server');
  assert.ok([201, 202].includes(start.status), `start answered ${start.status}: ${JSON.stringify(start.json)}`);
  await hub.ready('alice\'s server to be ready', aliceReady, { timeout: 120_000 });
  const route = (await lk.routes())['/user/alice'];
  assert.ok(route, 'the route /user/alice exists');
  assert.equal(route.user, 'alice');
  assert.equal(route.server_name, '');
  assert.equal(route.jupyterhub, true);

  // alice opens her server through latchkey: latchkey's sign-in first (it guards the route),
  // then JupyterHub's (the single-user server's OAuth), then JupyterLab.
  const ctx = await person(browser, lk);
  const page = await ctx.newPage();
  await page.goto(lk.url('/user/alice/lab'));
  assert.equal(new URL(page.url()).pathname, '/latchkey/login');
  await shot(page, dir, 'latchkey-login-before-hub');
  await signIn(page, lk, 'alice', { next: '/user/alice/lab' });
  await page.locator('#username_input').waitFor();
  assert.equal(new URL(page.url()).pathname, '/hub/login');
  await page.locator('#username_input').fill('alice');
  await page.locator('#password_input').fill(HUB_PASSWORD);
  await page.locator('#password_input').press('Enter');
  await page.locator('.jp-Launcher').waitFor({ timeout: 90_000 });
  assert.match(page.url(), /\/user\/alice\/lab/);
  await shot(page, dir, 'jupyterlab-via-jupyterhub');
  // Her kernel's WebSocket works through latchkey too.
  await openNotebookAt(page, lk.url('/user/alice/lab/tree/story.ipynb?reset'));
  await runCellIn(page, 'print(6*7)', '42', dir);
  await shot(page, dir, 'jupyterlab-via-jupyterhub-cell');

  // alice shares her server with nina in latchkey's sharing menu (under /latchkey/).
  await page.goto(lk.hub('sharing/alice/'));
  const share = page.locator('section[aria-labelledby=direct]');
  await share.getByLabel('Name').fill('nina');
  await share.getByRole('button', { name: 'Share' }).click();
  await page.getByRole('status').filter({ hasText: 'Shared with nina as use.' }).waitFor();
  const ninaCtx = await person(browser, lk);
  const ninaPage = await ninaCtx.newPage();
  await signIn(ninaPage, lk, 'nina');
  const ninaCookie = await sessionCookie(ninaCtx);
  // latchkey lets nina through; the server itself then sends her to the hub's OAuth.
  const through = await request(lk.url('/user/alice/lab'), { headers: { Cookie: ninaCookie } });
  assert.equal(through.status, 302);
  assert.match(through.headers.location, /\/hub\/api\/oauth2\/authorize/);

  // Activity seen by latchkey reaches the hub through GET /api/routes.
  await page.close();
  const seen = Date.parse((await lk.routes())['/user/alice'].last_activity);
  const hubSeen = await waitFor('the hub to take last_activity from latchkey', async () => {
    const t = Date.parse((await hubApi('GET', '/users/alice')).json.servers[''].last_activity);
    return t >= seen && t;
  }, { timeout: 20_000 });
  assert.equal(hubSeen, seen, 'the hub holds exactly the time latchkey reported');

  // Stopping the server removes its route, and with it every grant.
  const stop = await hubApi('DELETE', '/users/alice/server');
  assert.ok([202, 204].includes(stop.status), `stop answered ${stop.status}`);
  await waitFor('latchkey to lose the route /user/alice', async () => !(await lk.routes())['/user/alice'], { timeout: 60_000 });
  // With no route for /user/alice, the request falls to the hub's route "/" (as with CHP), and
  // the hub says the server is not running.
  const gone = await request(lk.url('/user/alice/lab'), { headers: { Cookie: ninaCookie } });
  assert.equal(gone.status, 302);
  assert.match(gone.headers.location, /^\/hub\/user\/alice\/lab/);
  // Started again (a new target, so a new session), the old grant does not come back.
  await hubApi('POST', '/users/alice/server');
  await hub.ready('alice\'s server to be ready again', aliceReady, { timeout: 120_000 });
  await waitFor('the new route', async () => (await lk.routes())['/user/alice']);
  await ninaPage.goto(lk.url('/user/alice/lab'));
  await ninaPage.getByRole('heading', { name: 'Access ended' }).waitFor();
  assert.match(await ninaPage.locator('main').innerText(), /The owner's server restarted/);
  await shot(ninaPage, dir, 'error-hub-server-restarted');
  const shares = await request(lk.hub('api/shares/alice/'), { headers: { Cookie: await sessionCookie(ctx) } });
  assert.equal(shares.status, 200);
  assert.deepEqual(JSON.parse(shares.body).items, []);
  await ctx.close();
  await ninaCtx.close();
});

