// Sign-in through a real OpenID Connect provider (oidc-provider, with its development login
// and consent forms), in Chromium. bob has no latchkey account: he signs in at the provider,
// accepts john's invite link on the way, and lands in john's server. The provider puts the
// profile and groups claims in userinfo only (its default), so latchkey reads them there.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, test } from 'node:test';

import Provider from 'oidc-provider';

import {
  freePort, launchBrowser, person, Proc, randomToken, request, shot, signIn, startLatchkey,
  stopAll, waitFor, workDir,
} from './harness.mjs';

const dir = workDir('oidc');
const clientSecret = randomToken();
// The provider's accounts: login name -> groups. "john" is also a local latchkey account.
const accounts = { bob: ['lab', 'physics'], eve: ['visitors'], john: ['lab'], carol: ['lab'] };
let lk;
let browser;
let idp;
let idpIssuer;

before(async () => {
  const idpPort = await freePort();
  const issuer = `http://127.0.0.1:${idpPort}`;
  idpIssuer = issuer;
  const upstreamPort = await freePort();
  const site = path.join(dir, 'site');
  fs.mkdirSync(site, { recursive: true });
  fs.writeFileSync(path.join(site, 'index.html'), '<!doctype html><title>john\'s notebook</title><h1>john\'s notebook</h1>');
  const upstream = new Proc('http-server', 'python3', ['-m', 'http.server', String(upstreamPort), '--bind', '127.0.0.1', '--directory', site], { dir });
  browser = await launchBrowser();
  // latchkey reads the provider's metadata at the first sign-in, so it may start first (and
  // then the provider knows where to send browsers back).
  lk = await startLatchkey(dir, {
    oidc: {
      issuer, clientId: 'latchkey', clientSecret, allowedGroups: ['lab'], displayName: 'Test ID',
      logoutUrl: `${issuer}/session/end`,
    },
  });
  const provider = new Provider(issuer, {
    clients: [{
      client_id: 'latchkey',
      client_secret: clientSecret,
      redirect_uris: [lk.hub('oauth_callback')],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    pkce: { required: () => true },
    features: { devInteractions: { enabled: true } },
    scopes: ['openid', 'profile', 'groups'],
    claims: { openid: ['sub'], profile: ['preferred_username', 'name'], groups: ['groups'] },
    findAccount: async (ctx, sub) => ({
      accountId: sub,
      // A capital letter: latchkey lower-cases the name.
      claims: async () => ({ sub, preferred_username: sub[0].toUpperCase() + sub.slice(1), name: sub, groups: accounts[sub] ?? [] }),
    }),
    cookies: { keys: [randomToken()] },
  });
  idp = http.createServer(provider.callback());
  await new Promise((resolve) => idp.listen(idpPort, '127.0.0.1', resolve));
  await waitFor('the provider', async () => (await request(`${issuer}/.well-known/openid-configuration`)).status === 200);
  await upstream.ready('python3 -m http.server', async () => (await request(`http://127.0.0.1:${upstreamPort}/`)).status === 200);
  await lk.postRoute('/user/john', { user: 'john', server_name: '', target: `http://127.0.0.1:${upstreamPort}`, strip_prefix: true });
});

after(async () => {
  await browser?.close();
  idp?.closeAllConnections();
  idp?.close();
  await stopAll();
});

/** From latchkey's sign-in page through the provider's login and consent forms. */
async function signInAtProvider(page, login) {
  await page.getByRole('link', { name: 'Sign in with Test ID' }).click();
  await page.locator('input[name=login]').fill(login);
  await page.locator('input[name=password]').fill('any password');
  await page.locator('button[type=submit]').click();
  // The consent form ("Authorize"), then back to latchkey.
  await page.locator('button[type=submit]').click();
}

test('bob signs in at the provider on his way to john\'s invite link, accepts, and lands in john\'s server', async () => {
  const john = await person(browser, lk);
  const bob = await person(browser, lk);
  const johnPage = await john.newPage();
  const bobPage = await bob.newPage();
  await signIn(johnPage, lk, 'john');

  // Before bob's first sign-in latchkey does not know him.
  await johnPage.goto(lk.hub('sharing/john/'));
  const direct = johnPage.locator('section[aria-labelledby=direct]');
  await direct.getByLabel('Name').fill('bob');
  await direct.getByRole('button', { name: 'Share' }).click();
  await johnPage.getByText('There is no user bob.').waitFor();

  await johnPage.goto(lk.hub('sharing/john/'));
  await johnPage.locator('section[aria-labelledby=create]').getByRole('button', { name: 'Create link' }).click();
  const link = await johnPage.locator('#new-link-url').inputValue();

  // The link sends bob to the sign-in page, which offers the provider and the password form.
  await bobPage.goto(link);
  assert.equal(new URL(bobPage.url()).pathname, `${lk.prefix}login`);
  await bobPage.locator('#username').waitFor();
  await shot(bobPage, dir, 'sign-in-with-provider');
  await signInAtProvider(bobPage, 'bob');
  // Back at the accept page the link named, signed in as bob.
  await bobPage.getByRole('button', { name: 'Accept' }).waitFor();
  assert.equal(new URL(bobPage.url()).pathname, `${lk.prefix}accept-share`);
  assert.match(await bobPage.locator('header').innerText(), /\bbob\b/);
  await Promise.all([bobPage.waitForURL(lk.url('/user/john/')), bobPage.getByRole('button', { name: 'Accept' }).click()]);
  await bobPage.locator('h1', { hasText: 'john\'s notebook' }).waitFor();
  await shot(bobPage, dir, 'bob-in-johns-server');

  // The sign-in's state cookie is gone; the session cookie is latchkey's usual one.
  const names = (await bob.cookies()).map((c) => c.name).filter((n) => n.startsWith('latchkey')).sort();
  assert.deepEqual(names, ['latchkey-session']);

  // john sees bob among the people, and may now share with him and with his group by name.
  await johnPage.goto(lk.hub('sharing/john/'));
  const people = johnPage.locator('section[aria-labelledby=people] tbody tr');
  assert.match(await people.filter({ hasText: 'bob' }).innerText(), /accepted an invite link/);
  await direct.getByLabel('Kind').selectOption('group');
  await direct.getByLabel('Name').fill('physics');
  await direct.getByRole('button', { name: 'Share' }).click();
  await johnPage.getByRole('status').filter({ hasText: 'Shared with group physics as use.' }).waitFor();

  // Revoking bob closes his access at once, as for anyone.
  await johnPage.goto(lk.hub('sharing/john/'));
  const row = people.filter({ hasText: 'bob' });
  await Promise.all([johnPage.waitForNavigation(), row.getByRole('button', { name: /Revoke/ }).click()]);
  // The group share still admits him (physics): revoke that too, then he is refused.
  await Promise.all([johnPage.waitForNavigation(), people.filter({ hasText: 'physics' }).getByRole('button', { name: /Revoke/ }).click()]);
  const refused = await bobPage.goto(lk.url('/user/john/'));
  assert.equal(refused.status(), 403);

  // Sign out ends latchkey's sign-in and goes on to the provider's sign-out; john, who signed
  // in with his password, goes to latchkey's sign-in page as before.
  await bobPage.goto(lk.hub('home'));
  await Promise.all([
    bobPage.waitForURL((u) => u.href.startsWith(`${idpIssuer}/session/end`)),
    bobPage.getByRole('button', { name: 'Sign out' }).click(),
  ]);
  assert.equal((await bob.cookies()).filter((c) => c.name === 'latchkey-session').length, 0);
  await Promise.all([
    johnPage.waitForURL((u) => u.pathname === `${lk.prefix}login`),
    johnPage.getByRole('button', { name: 'Sign out' }).click(),
  ]);
});

test('the provider\'s users outside the allowed groups, and local account names, are refused', async () => {
  const eve = await person(browser, lk);
  const page = await eve.newPage();
  await page.goto(lk.hub('login'));
  await signInAtProvider(page, 'eve');
  await page.getByText('eve is not in a group that may use this service.').waitFor();
  assert.equal(new URL(page.url()).pathname, `${lk.prefix}oauth_callback`);
  assert.equal((await eve.cookies()).filter((c) => c.name === 'latchkey-session').length, 0);
  await shot(page, dir, 'not-in-an-allowed-group');

  // The provider's "john" does not become latchkey's john.
  const other = await person(browser, lk);
  const p2 = await other.newPage();
  await p2.goto(lk.hub('login'));
  await signInAtProvider(p2, 'john');
  await p2.getByText('john is an account of latchkey\'s own: sign in with its password.').waitFor();
  assert.equal((await other.cookies()).filter((c) => c.name === 'latchkey-session').length, 0);
});

test('a callback that this browser did not start, or a cancelled sign-in, changes nothing', async () => {
  // No state cookie: a code and state from elsewhere (login CSRF) are refused before any
  // exchange with the provider.
  const r = await request(lk.hub('oauth_callback?code=abc&state=def.L2h1Yi9ob21l'));
  assert.equal(r.status, 400);
  assert.match(r.body, /not started in this browser/);
  assert.ok(!String(r.headers['set-cookie'] ?? '').includes('latchkey-session='));
  // A state made for another browser's secret.
  const cookie = `latchkey-oidc-state=${'A'.repeat(43)}`;
  const wrong = await request(lk.hub('oauth_callback?code=abc&state=def.L2h1Yi9ob21l'), { headers: { cookie } });
  assert.equal(wrong.status, 400);
  // The provider reports that the person cancelled.
  const cancelled = await request(lk.hub('oauth_callback?error=access_denied&state=x'), { headers: { cookie } });
  assert.equal(cancelled.status, 403);
  assert.match(cancelled.body, /did not sign you in \(access_denied\)/);
});
