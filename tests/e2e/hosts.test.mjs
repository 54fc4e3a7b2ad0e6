// Host-based routing in Chromium: latchkey's pages on lab.test, john's server on
// john.lab.test. nina accepts john's invite link on lab.test, is sent to john's host, has her
// sign-in handed over there, and sees his page; a script on that page cannot read latchkey's
// API as her, which a page on latchkey's own host can.
//
// john's server is Python's http.server. Chromium resolves lab.test and *.lab.test to
// 127.0.0.1 (--host-resolver-rules).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import {
  freePort, hostResolverArgs, launchBrowser, person, Proc, request, shot, signIn, startLatchkey,
  stopAll, workDir,
} from './harness.mjs';

const dir = workDir('hosts');
let lk;
let browser;

before(async () => {
  const port = await freePort();
  const site = path.join(dir, 'site');
  fs.mkdirSync(site, { recursive: true });
  fs.writeFileSync(path.join(site, 'index.html'), '<!doctype html><title>john\'s notebook</title><h1>john\'s notebook</h1>');
  const upstream = new Proc('http-server', 'python3', ['-m', 'http.server', String(port), '--bind', '127.0.0.1', '--directory', site], { dir });
  browser = await launchBrowser(hostResolverArgs('lab.test'));
  lk = await startLatchkey(dir, { userDomain: 'lab.test' });
  await upstream.ready('python3 -m http.server', async () => (await request(`http://127.0.0.1:${port}/`)).status === 200);
  await lk.postRoute('/user/john', { user: 'john', server_name: '', target: `http://127.0.0.1:${port}`, strip_prefix: true });
});

after(async () => {
  await browser?.close();
  await stopAll();
});

/** What a script on the page can learn from latchkey's API with the visitor's cookies. */
function probeApi(page, url) {
  return page.evaluate(async (u) => {
    try {
      const r = await fetch(u, { credentials: 'include' });
      return `${r.status} ${await r.text()}`;
    } catch (e) {
      return `blocked: ${e.name}`;
    }
  }, url);
}

test('nina opens john\'s shared server on his own host, and its pages cannot use her sign-in', async () => {
  const john = await person(browser, lk);
  const nina = await person(browser, lk);
  const johnPage = await john.newPage();
  const ninaPage = await nina.newPage();
  const johnsHost = lk.base.replace('://lab.test', '://john.lab.test');

  await signIn(johnPage, lk, 'john');
  await johnPage.goto(lk.hub('sharing/john/'));
  await johnPage.locator('section[aria-labelledby=create]').getByRole('button', { name: 'Create link' }).click();
  const link = await johnPage.locator('#new-link-url').inputValue();
  assert.ok(link.startsWith(lk.hub('accept-share')), link);

  // nina signs in, accepts, and lands on john's host: her sign-in is handed over there
  // without another sign-in form.
  await signIn(ninaPage, lk, 'nina', { next: new URL(link).pathname + new URL(link).search });
  // (The redirects pass through john's host before the hand-over: wait for the page itself.)
  await ninaPage.getByRole('button', { name: 'Accept' }).click();
  await ninaPage.locator('h1', { hasText: 'john\'s notebook' }).waitFor();
  assert.equal(ninaPage.url(), `${johnsHost}/user/john/`);
  await shot(ninaPage, dir, 'johns-host');

  // latchkey's cookies are not this origin's: none is sent by or visible to its pages.
  const cookies = await nina.cookies(`${johnsHost}/user/john/`);
  const own = cookies.filter((c) => c.name.startsWith('latchkey')).sort((a, b) => a.name.localeCompare(b.name));
  assert.deepEqual(own.map((c) => [c.name, c.domain, c.httpOnly]), [
    ['latchkey-host-state', 'john.lab.test', true],
    ['latchkey-session', 'john.lab.test', true],
  ]);
  assert.equal(await ninaPage.evaluate(() => document.cookie), '');

  // A script on john's page asks latchkey's API who nina is: on latchkey's host (cross
  // origin) and through john's host (sent on to latchkey's host). Both are blocked.
  assert.match(await probeApi(ninaPage, lk.hub('api/user')), /^blocked/);
  assert.match(await probeApi(ninaPage, `${johnsHost}/hub/api/user`), /^blocked/);
  assert.match(await probeApi(ninaPage, `${johnsHost}/hub/sharing/nina/`), /^blocked/);
  // A script on john's page plants an _xsrf cookie for the whole domain and posts latchkey's
  // sign-out form with it from a no-referrer page (its Origin is then null, and over http
  // Chromium sends no Fetch Metadata): refused, and nina stays signed in.
  const [planted] = await Promise.all([
    ninaPage.waitForResponse((r) => r.url() === lk.hub('logout')),
    ninaPage.evaluate((action) => {
      const token = 'A'.repeat(43);
      document.cookie = `_xsrf=${token}; domain=lab.test; path=${new URL(action).pathname}`;
      const meta = Object.assign(document.createElement('meta'), { name: 'referrer', content: 'no-referrer' });
      document.head.append(meta);
      const sink = Object.assign(document.createElement('iframe'), { name: 'sink' });
      const form = Object.assign(document.createElement('form'), { method: 'POST', action, target: 'sink' });
      form.append(Object.assign(document.createElement('input'), { name: '_xsrf', value: token }));
      document.body.append(sink, form);
      form.submit();
    }, lk.hub('logout')),
  ]);
  assert.equal(planted.request().headers().origin, 'null');
  assert.equal(planted.status(), 403);

  // The same script on one of latchkey's own pages reads it: the block is the host's doing.
  await ninaPage.goto(lk.hub('home'));
  assert.match(await probeApi(ninaPage, lk.hub('api/user')), /^200 .*"name":"nina"/);

  // Back to john's server from latchkey's home page: no new hand-over needed.
  await ninaPage.goto(lk.url('/user/john/'));
  assert.equal(ninaPage.url(), `${johnsHost}/user/john/`);
  assert.match(await ninaPage.locator('h1').innerText(), /john's notebook/);

  // A Log out link on john's page (JupyterLab's goes to /hub/logout) reaches latchkey's host,
  // which asks first; signing out there ends the sign-in on john's host too.
  await ninaPage.evaluate(() => {
    const a = Object.assign(document.createElement('a'), { href: '/hub/logout', textContent: 'Log out' });
    document.body.append(a);
  });
  await ninaPage.getByRole('link', { name: 'Log out' }).click();
  await ninaPage.getByRole('heading', { name: 'Sign out of latchkey?' }).waitFor();
  assert.equal(ninaPage.url(), lk.hub('logout'));
  await shot(ninaPage, dir, 'sign-out-asked');
  await Promise.all([
    ninaPage.waitForURL(/\/hub\/login/),
    ninaPage.locator('main').getByRole('button', { name: 'Sign out' }).click(),
  ]);
  await ninaPage.goto(`${johnsHost}/user/john/`);
  assert.ok(ninaPage.url().startsWith(lk.hub('login')), ninaPage.url());
  await john.close();
  await nina.close();
});
