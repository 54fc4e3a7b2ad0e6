// Every latchkey page in Chromium: sign-in, dashboard, sharing menu (create a link, copy it,
// revoke one, revoke all users, revoke all links, share directly), accept page, leave, API
// tokens (make one, copy it, delete it), and each error page a browser can reach. Keyboard use
// and basic accessibility are checked on the way, and every page is saved as a screenshot under
// target/e2e-artifacts/pages/.
//
// john's server here is Python's http.server (a real HTTP server; the Jupyter story is in
// jupyter.test.mjs).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before, test } from 'node:test';

import {
  freePort, launchBrowser, person, Proc, request, shot, signIn, startLatchkey, stopAll, users,
  workDir,
} from './harness.mjs';

const dir = workDir('pages');
let lk;
let upstream;
let browser;
let john;
let nina;
let johnPage;
let ninaPage;

before(async () => {
  const port = await freePort();
  const site = path.join(dir, 'site');
  fs.mkdirSync(site, { recursive: true });
  fs.writeFileSync(path.join(site, 'index.html'), '<!doctype html><title>john\'s notebook</title><h1>john\'s notebook</h1>');
  upstream = new Proc('http-server', 'python3', ['-m', 'http.server', String(port), '--bind', '127.0.0.1', '--directory', site], { dir });
  browser = await launchBrowser();
  lk = await startLatchkey(dir);
  await upstream.ready('python3 -m http.server', async () => (await request(`http://127.0.0.1:${port}/`)).status === 200);
  await lk.postRoute('/user/john', { user: 'john', server_name: '', target: `http://127.0.0.1:${port}`, strip_prefix: true });
  // A server whose process is gone: its route points at a closed port.
  await lk.postRoute('/user/john/dead', { user: 'john', server_name: 'dead', target: `http://127.0.0.1:${await freePort()}` });
  john = await person(browser, lk);
  nina = await person(browser, lk);
  await john.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: lk.base });
  johnPage = await john.newPage();
  ninaPage = await nina.newPage();
});

after(async () => {
  await browser?.close();
  await stopAll();
});

/**
 * Checks what every page should have: a language, one h1, a label for every visible form
 * control, and a visible focus ring on whatever the keyboard focuses.
 */
async function checkAccessible(page) {
  const problems = await page.evaluate(() => {
    const out = [];
    if (!document.documentElement.lang) out.push('no lang on <html>');
    const h1 = document.querySelectorAll('h1').length;
    if (h1 !== 1) out.push(`${h1} h1 elements`);
    for (const el of document.querySelectorAll('input:not([type=hidden]), select, textarea, button')) {
      const name = el.getAttribute('aria-label') || (el.labels && [...el.labels].map((l) => l.textContent).join(' ').trim())
        || (el.tagName === 'BUTTON' && el.textContent.trim());
      if (!name) out.push(`unlabelled ${el.outerHTML.slice(0, 80)}`);
    }
    return out;
  });
  assert.deepEqual(problems, [], `accessibility problems on ${page.url()}`);
  const first = await page.evaluate(() => document.querySelector('a[href], button, input:not([type=hidden]), select, textarea')?.textContent.trim());
  assert.equal(first, 'Skip to content', 'the skip link comes first');
  await page.keyboard.press('Tab');
  const focus = await page.evaluate(() => {
    const el = document.activeElement;
    const s = getComputedStyle(el);
    return { tag: el.tagName, outline: s.outlineStyle, width: parseFloat(s.outlineWidth) };
  });
  assert.notEqual(focus.tag, 'BODY', 'Tab focuses something');
  assert.ok(focus.outline !== 'none' && focus.width >= 2, `focus is visible: ${JSON.stringify(focus)}`);
}

/** Presses Tab until the focused element's text is `text`; fails if it never is. */
async function tabTo(page, text, max = 40) {
  for (let i = 0; i < max; i += 1) {
    await page.keyboard.press('Tab');
    const t = await page.evaluate(() => (document.activeElement?.textContent || document.activeElement?.value || '').trim());
    if (t === text) return;
  }
  assert.fail(`Tab never reached "${text}" on ${page.url()}`);
}

/** Asserts latchkey's error page: status, title, message, request id. */
async function errorPage(page, resp, status, title, message, name) {
  assert.equal(resp.status(), status, `status of ${page.url()}`);
  await page.getByRole('heading', { name: title, level: 1 }).waitFor();
  const text = await page.locator('main').innerText();
  assert.match(text, message);
  assert.match(text, new RegExp(`Error ${status}`));
  assert.match(text, /Request id [0-9a-f]{24}/);
  await checkAccessible(page);
  await shot(page, dir, name);
}

test('the sign-in page refuses a wrong password, then signs john in by keyboard', async () => {
  let resp = await johnPage.goto(lk.url('/user/john/'));
  assert.equal(new URL(johnPage.url()).pathname, '/hub/login');
  assert.equal(resp.status(), 200);
  // The page names its icon, so the browser asks for no /favicon.ico (a 404 in the log).
  const icon = await johnPage.locator('link[rel=icon]').getAttribute('href');
  assert.equal((await request(lk.url(icon))).status, 200);
  await checkAccessible(johnPage);
  await shot(johnPage, dir, 'login');
  // The user name field has focus on arrival (autofocus).
  await johnPage.goto(lk.url('/hub/login?next=%2Fuser%2Fjohn%2F'));
  assert.equal(await johnPage.evaluate(() => document.activeElement.id), 'username');
  await johnPage.keyboard.type('john');
  await johnPage.keyboard.press('Tab');
  await johnPage.keyboard.type('not the password');
  [resp] = await Promise.all([johnPage.waitForNavigation(), johnPage.keyboard.press('Enter')]);
  assert.equal(resp.status(), 403);
  assert.equal(await johnPage.getByRole('alert').innerText(), 'Invalid user name or password.');
  assert.equal(await johnPage.locator('#username').inputValue(), 'john', 'the name is kept');
  // The password field has focus now, so the second try is just typing it again.
  assert.equal(await johnPage.evaluate(() => document.activeElement.id), 'password');
  await shot(johnPage, dir, 'login-failed');
  await johnPage.locator('#password').focus();
  await johnPage.keyboard.type(users().john.password);
  await Promise.all([johnPage.waitForURL(lk.url('/user/john/')), johnPage.keyboard.press('Enter')]);
  assert.match(await johnPage.locator('h1').innerText(), /john's notebook/);
});

test('the dashboard lists john\'s servers with Open and Share', async () => {
  await johnPage.goto(lk.hub('home'));
  await checkAccessible(johnPage);
  const mine = johnPage.locator('section', { has: johnPage.getByRole('heading', { name: 'My servers' }) });
  assert.match(await mine.innerText(), /john's server[\s\S]*nobody[\s\S]*Open[\s\S]*Share/);
  assert.match(await mine.innerText(), /john\/dead/);
  assert.match(await johnPage.locator('main').innerText(), /Nothing is shared with you right now/);
  await shot(johnPage, dir, 'home-john');
  await Promise.all([johnPage.waitForURL(lk.hub('sharing/john/')), mine.getByRole('link', { name: 'Share' }).first().click()]);
});

let firstLink;

test('the sharing menu creates a link by keyboard and copies it', async () => {
  await johnPage.goto(lk.hub('sharing/john/'));
  await checkAccessible(johnPage);
  assert.match(await johnPage.locator('section[aria-labelledby=links]').innerText(), /No active links/);
  assert.match(await johnPage.locator('section[aria-labelledby=people]').innerText(), /Nobody but you/);
  await shot(johnPage, dir, 'sharing-empty');
  await tabTo(johnPage, 'Create link');
  const [created] = await Promise.all([johnPage.waitForNavigation(), johnPage.keyboard.press('Enter')]);
  // The keyboard user lands on the new link's copy button.
  assert.equal(await johnPage.evaluate(() => document.activeElement.textContent), 'Copy link');
  // The page that shows the code is not cached and leaks no referrer.
  assert.match(created.headers()['cache-control'] || '', /no-store/);
  assert.equal(created.headers()['referrer-policy'], 'no-referrer');
  const url = await johnPage.locator('#new-link-url').inputValue();
  assert.match(url, new RegExp(`^${lk.base}/hub/accept-share\\?code=[A-Za-z0-9_-]{43}$`));
  firstLink = url;
  const copy = johnPage.getByRole('button', { name: 'Copy link' });
  await copy.click();
  await johnPage.getByRole('button', { name: 'Copied' }).waitFor();
  assert.equal(await johnPage.evaluate(() => navigator.clipboard.readText()), url);
  assert.match(await johnPage.locator('#newlink').locator('..').innerText(), /shown only once[\s\S]*Expires in (1 h 0 min|59 min)/);
  await checkAccessible(johnPage);
  await shot(johnPage, dir, 'sharing-new-link');
  // Reloading the page that shows the link asks for the page again: no second link, and the
  // link is not shown again.
  const links = johnPage.locator('section[aria-labelledby=links] tbody tr');
  assert.equal(await links.count(), 1);
  const reloaded = await johnPage.reload();
  assert.equal(reloaded.request().method(), 'GET');
  assert.equal(await links.count(), 1);
  assert.equal(await johnPage.locator('#new-link-url').count(), 0);
});

test('nina accepts by keyboard, finds the server on her dashboard, and leaves it', async () => {
  await signIn(ninaPage, lk, 'nina', { next: new URL(firstLink).pathname + new URL(firstLink).search });
  assert.equal(ninaPage.url(), firstLink);
  await checkAccessible(ninaPage);
  await shot(ninaPage, dir, 'accept');
  await tabTo(ninaPage, 'Accept');
  await Promise.all([ninaPage.waitForURL(lk.url('/user/john/')), ninaPage.keyboard.press('Enter')]);
  assert.match(await ninaPage.locator('h1').innerText(), /john's notebook/);
  await ninaPage.goto(lk.hub('home'));
  const shared = ninaPage.locator('section', { has: ninaPage.getByRole('heading', { name: 'Shared with me' }) });
  assert.match(await shared.innerText(), /john's server\s+john\s+use/);
  await checkAccessible(ninaPage);
  await shot(ninaPage, dir, 'home-nina');
  // nina may not manage john's sharing.
  const resp = await ninaPage.goto(lk.hub('sharing/john/'));
  await errorPage(ninaPage, resp, 403, 'Not allowed', /.+/, 'error-not-allowed');
  // Leaving is for direct shares; john shares directly with her, then she leaves.
  await johnPage.goto(lk.hub('sharing/john/'));
  const direct = johnPage.locator('section[aria-labelledby=direct]');
  await direct.getByLabel('Name').fill('nina');
  await direct.getByLabel('Role').selectOption('view');
  await direct.getByRole('button', { name: 'Share' }).click();
  // Re-sharing replaces her grant, so she now holds view.
  await johnPage.getByRole('status').filter({ hasText: 'Shared with nina as view.' }).waitFor();
  await ninaPage.goto(lk.hub('home'));
  assert.match(await shared.innerText(), /view/);
  await Promise.all([ninaPage.waitForNavigation(), shared.getByRole('button', { name: 'Leave' }).click()]);
  assert.equal(await ninaPage.getByRole('status').innerText(), "You left john's server.");
  assert.match(await shared.innerText(), /Nothing is shared with you/);
  const back = await ninaPage.goto(lk.url('/user/john/'));
  await errorPage(ninaPage, back, 403, /Not shared with you|Access ended/, /john's server/, 'error-after-leaving');
});

test('revoke one link, revoke all users, revoke all links', async () => {
  // Two more links; nina accepts one; the group analysts gets a direct share.
  await johnPage.goto(lk.hub('sharing/john/'));
  const create = johnPage.locator('section[aria-labelledby=create]');
  await create.getByLabel('Role').selectOption('view');
  await create.getByLabel('Valid for').selectOption({ label: '5 minutes' });
  await create.getByRole('button', { name: 'Create link' }).click();
  const viewLink = await johnPage.locator('#new-link-url').inputValue();
  await johnPage.goto(lk.hub('sharing/john/'));
  await create.getByRole('button', { name: 'Create link' }).click();
  const useLink = await johnPage.locator('#new-link-url').inputValue();
  await ninaPage.goto(useLink);
  await Promise.all([ninaPage.waitForURL(lk.url('/user/john/')), ninaPage.getByRole('button', { name: 'Accept' }).click()]);
  await johnPage.goto(lk.hub('sharing/john/'));
  const direct = johnPage.locator('section[aria-labelledby=direct]');
  await direct.getByLabel('Kind').selectOption('group');
  await direct.getByLabel('Name').fill('analysts');
  await direct.getByRole('button', { name: 'Share' }).click();
  await johnPage.getByRole('status').filter({ hasText: 'Shared with group analysts as use.' }).waitFor();
  const links = johnPage.locator('section[aria-labelledby=links] tbody tr');
  const people = johnPage.locator('section[aria-labelledby=people] tbody tr');
  assert.equal(await links.count(), 3);
  assert.equal(await people.count(), 2);
  assert.match(await people.filter({ hasText: 'nina' }).innerText(), /accepted an invite link/);
  assert.match(await people.filter({ hasText: 'analysts' }).innerText(), /group[\s\S]*shared by john/);
  await checkAccessible(johnPage);
  await shot(johnPage, dir, 'sharing-links-and-people');

  // Revoke the view link (the one that expires in 5 minutes).
  const viewRow = links.filter({ hasText: /in [45] min/ });
  assert.equal(await viewRow.count(), 1);
  await viewRow.getByRole('button', { name: /^Revoke the view link created \d{4}-\d\d-\d\d \d\d:\d\d UTC$/ }).click();
  await johnPage.getByRole('status').filter({ hasText: 'The link was revoked.' }).waitFor();
  assert.equal(await links.count(), 2);
  let resp = await ninaPage.goto(viewLink);
  await errorPage(ninaPage, resp, 404, 'Invite link not valid', /unknown, has expired or was revoked/, 'error-invite-not-valid');

  // Revoke all users asks first: dismissed, nothing happens; accepted, nina and the group lose
  // access at once.
  const asked = [];
  johnPage.once('dialog', (d) => { asked.push(d.message()); return d.dismiss(); });
  await johnPage.getByRole('button', { name: 'Revoke all users' }).click();
  assert.match(asked[0] ?? '', /Revoke everyone's access to this server\?/);
  assert.equal(await people.count(), 2, 'nothing revoked after Cancel');
  johnPage.once('dialog', (d) => d.accept());
  await johnPage.getByRole('button', { name: 'Revoke all users' }).click();
  await johnPage.getByRole('status').filter({ hasText: "Everyone's access was revoked." }).waitFor();
  // The links still active would let them back in: the notice says so.
  assert.match(await johnPage.getByRole('status').innerText(), /active links below still let anyone who has one accept it again/);
  assert.match(await johnPage.locator('section[aria-labelledby=people]').innerText(), /Nobody but you/);
  resp = await ninaPage.goto(lk.url('/user/john/'));
  await errorPage(ninaPage, resp, 403, 'Access ended', /The owner revoked your access/, 'error-access-revoked');

  // Revoke all links (after saying yes): the remaining links stop working.
  johnPage.once('dialog', (d) => { asked.push(d.message()); return d.accept(); });
  await johnPage.getByRole('button', { name: 'Revoke all links' }).click();
  await johnPage.getByRole('status').filter({ hasText: 'All links were revoked.' }).waitFor();
  assert.match(asked[1] ?? '', /^Revoke all 2 active links\?/);
  assert.match(await johnPage.locator('section[aria-labelledby=links]').innerText(), /No active links/);
  await shot(johnPage, dir, 'sharing-after-revoke-all');
  for (const link of [firstLink, useLink]) {
    resp = await ninaPage.goto(link);
    assert.equal(resp.status(), 404);
  }
});

test('the tokens page makes a token by keyboard, shows it once, and deletes it', async () => {
  await johnPage.goto(lk.hub('home'));
  await johnPage.getByRole('link', { name: 'API tokens' }).click();
  await johnPage.getByRole('heading', { name: 'API tokens', level: 1 }).waitFor();
  assert.match(await johnPage.locator('section[aria-labelledby=tokens]').innerText(), /You have no API tokens/);
  await checkAccessible(johnPage);
  await johnPage.getByLabel('Note').fill('laptop');
  await johnPage.getByLabel('Valid for').selectOption({ label: '7 days' });
  await johnPage.getByLabel('Note').focus();
  await tabTo(johnPage, 'Create token');
  const [created] = await Promise.all([johnPage.waitForNavigation(), johnPage.keyboard.press('Enter')]);
  assert.match(created.headers()['cache-control'] || '', /no-store/);
  assert.equal(created.headers()['referrer-policy'], 'no-referrer');
  const token = await johnPage.locator('#new-token').inputValue();
  assert.match(token, /^[A-Za-z0-9_-]{43}$/);
  await johnPage.getByRole('button', { name: 'Copy token' }).click();
  await johnPage.getByRole('button', { name: 'Copied' }).waitFor();
  assert.equal(await johnPage.evaluate(() => navigator.clipboard.readText()), token);
  const shown = await johnPage.locator('#newtoken').locator('..').innerText();
  assert.match(shown, /shown only once/);
  assert.match(shown, new RegExp(`LATCHKEY_URL=${lk.base} LATCHKEY_TOKEN=`));
  const row = johnPage.locator('section[aria-labelledby=tokens] tbody tr');
  assert.equal(await row.count(), 1);
  assert.match(await row.innerText(), /laptop/);
  await checkAccessible(johnPage);
  await shot(johnPage, dir, 'tokens-new');
  // Reloading asks for the page again: no second token, and the token is not shown again.
  const reloaded = await johnPage.reload();
  assert.equal(reloaded.request().method(), 'GET');
  assert.equal(await row.count(), 1);
  assert.ok(!(await johnPage.content()).includes(token));

  const me = lk.hub('api/user');
  const asScript = () => request(me, { headers: { authorization: `token ${token}` } });
  assert.equal((await asScript()).status, 200);
  // Shown once: the page does not have it any more.
  await johnPage.goto(lk.hub('token'));
  assert.ok(!(await johnPage.content()).includes(token));

  await Promise.all([johnPage.waitForNavigation(), row.getByRole('button', { name: /Delete token/ }).click()]);
  await johnPage.getByRole('status').filter({ hasText: /was deleted/ }).waitFor();
  assert.match(await johnPage.locator('section[aria-labelledby=tokens]').innerText(), /You have no API tokens/);
  assert.equal((await asScript()).status, 401);
  await shot(johnPage, dir, 'tokens-deleted');
});

test('an accept page left open past the link\'s expiry disables Accept and says why', async () => {
  await johnPage.goto(lk.hub('sharing/john/'));
  await Promise.all([johnPage.waitForNavigation(), johnPage.getByRole('button', { name: 'Create link' }).click()]);
  const link = await johnPage.locator('#new-link-url').inputValue();
  const ctx = await person(browser, lk);
  try {
    const page = await ctx.newPage();
    await page.clock.install();
    await signIn(page, lk, 'nina', { next: new URL(link).pathname + new URL(link).search });
    const accept = page.getByRole('button', { name: 'Accept' });
    assert.ok(await accept.isEnabled());
    await page.clock.fastForward('02:00:00');
    const expired = page.getByRole('button', { name: 'Link expired' });
    await expired.waitFor();
    assert.ok(await expired.isDisabled());
    await shot(page, dir, 'accept-expired');
  } finally {
    await ctx.close();
  }
  johnPage.once('dialog', (d) => d.accept());
  await johnPage.getByRole('button', { name: 'Revoke all links' }).click();
  await johnPage.getByRole('status').filter({ hasText: 'All links were revoked.' }).waitFor();
});

test('error pages: not shared, no such server or page, server not reachable, not running, form expired', async () => {
  let resp = await ninaPage.goto(lk.url('/user/john/dead/'));
  await errorPage(ninaPage, resp, 403, 'Not shared with you', /john\/dead is not shared with you\. Ask its owner for an invite link\./, 'error-not-shared');
  resp = await johnPage.goto(lk.url('/user/nobody/'));
  await errorPage(johnPage, resp, 404, 'Not found', /No server is running at this address\./, 'error-no-server');
  resp = await johnPage.goto(lk.hub('no-such-page'));
  await errorPage(johnPage, resp, 404, 'Not found', /There is no such page\./, 'error-no-page');
  resp = await johnPage.goto(lk.url('/user/john/dead/'));
  await errorPage(johnPage, resp, 502, 'Server not reachable', /refused the connection/, 'error-bad-gateway');
  // A server that stopped (route deleted): its sharing menu says so and offers nothing to share.
  assert.equal((await lk.routeApi('DELETE', '/user/john/dead')).status, 204);
  await johnPage.goto(lk.hub('sharing/john/dead'));
  assert.match(await johnPage.getByRole('alert').innerText(), /This server is not running/);
  assert.equal(await johnPage.getByRole('button', { name: 'Create link' }).count(), 0);
  await checkAccessible(johnPage);
  await shot(johnPage, dir, 'sharing-not-running');
  // A form whose XSRF cookie is gone (for instance after clearing cookies) is refused.
  const fresh = await person(browser, lk);
  const page = await fresh.newPage();
  await page.goto(lk.hub('login'));
  await fresh.clearCookies();
  await page.locator('#username').fill('john');
  await page.locator('#password').fill(users().john.password);
  [resp] = await Promise.all([page.waitForNavigation(), page.locator('#password').press('Enter')]);
  await errorPage(page, resp, 403, 'Form expired', /XSRF token is missing/, 'error-form-expired');
  await fresh.close();
});

test('error pages: a request path latchkey will not forward, a server that does not answer', async () => {
  let resp = await johnPage.goto(lk.url('/user/john/a%2Fb'));
  await errorPage(johnPage, resp, 400, 'Bad request', /.+/, 'error-bad-request');
  // A server that accepts connections and never answers, behind a latchkey that waits 1 s.
  const silent = net.createServer(() => {});
  await new Promise((r) => silent.listen(0, '127.0.0.1', r));
  const impatient = await startLatchkey(dir, { name: 'latchkey-impatient', upstreamTimeout: 1 });
  try {
    await impatient.postRoute('/silent', { target: `http://127.0.0.1:${silent.address().port}` });
    const ctx = await person(browser, impatient);
    const page = await ctx.newPage();
    resp = await page.goto(impatient.url('/silent/'));
    await errorPage(page, resp, 504, 'Server did not answer', /did not answer in time/, 'error-gateway-timeout');
    await ctx.close();
  } finally {
    silent.close();
    await impatient.stop();
  }
});

test('when the store cannot be reached, signing in gets a page that says to try again', async () => {
  const unreachable = `redis://127.0.0.1:${await freePort()}/0`;
  const storeless = await startLatchkey(dir, { name: 'latchkey-storeless', storeUrl: unreachable });
  try {
    const ctx = await person(browser, storeless);
    const page = await ctx.newPage();
    await page.goto(storeless.hub('login'));
    await page.locator('#username').fill('john');
    await page.locator('#password').fill(users().john.password);
    const [resp] = await Promise.all([page.waitForNavigation(), page.locator('#password').press('Enter')]);
    await errorPage(page, resp, 503, 'Temporarily unavailable', /cannot reach its store/, 'error-store-unavailable');
    await ctx.close();
  } finally {
    await storeless.stop();
  }
});

test('too many failed sign-ins get a page that says when to try again', async () => {
  const limited = await startLatchkey(dir, { name: 'latchkey-limited', login: { maxFailures: 2, failureWindow: 60 } });
  try {
    const ctx = await person(browser, limited);
    const page = await ctx.newPage();
    let resp;
    for (let i = 0; i < 3; i += 1) {
      await page.goto(limited.hub('login'));
      await page.locator('#username').fill('nina');
      await page.locator('#password').fill('wrong');
      [resp] = await Promise.all([page.waitForNavigation(), page.locator('#password').press('Enter')]);
    }
    await errorPage(page, resp, 429, 'Too many attempts', /Try again in \d+ seconds\./, 'error-too-many');
    assert.ok(Number(resp.headers()['retry-after']) > 0);
    await ctx.close();
  } finally {
    await limited.stop();
  }
});
