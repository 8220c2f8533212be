// The web client at `/`, driven in Debian's Chromium by playwright-core,
// against the real chat-runtime binary on a real PostgreSQL database.
//
// Needs: CHAT_RUNTIME_BIN (the built binary), CHORUS_TEST_DATABASE_URL (admin
// URL of the test server), psql, /usr/bin/chromium. `make test` provides all.
import {test, before, after} from 'node:test';
import assert from 'node:assert/strict';
import {spawn, execFileSync} from 'node:child_process';
import {createServer} from 'node:net';
import {mkdtempSync, mkdirSync} from 'node:fs';
import {tmpdir} from 'node:os';
import {join} from 'node:path';
import {chromium} from 'playwright-core';

const BIN = process.env.CHAT_RUNTIME_BIN;
const ADMIN_URL = process.env.CHORUS_TEST_DATABASE_URL;
const SHOTS = process.env.CHORUS_WEB_SCREENSHOTS || mkdtempSync(join(tmpdir(), 'chorus-web-'));
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const T = 15000;

let dbUrl;
let port;
let runtime;
let browser;

function freePort() {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
}

function startRuntime() {
  return new Promise((resolve, reject) => {
    const child = spawn(BIN, [], {
      env: {
        PATH: process.env.PATH,
        CHAT_DATABASE_URL: dbUrl,
        CHAT_TENANT_ID: 'webtest',
        CHAT_JWT_SECRET: 'web-test-secret-0123456789abcdef0123456789',
        CHAT_LISTEN_ADDR: `127.0.0.1:${port}`,
        CHAT_ADMIN_ADDR: '127.0.0.1:0',
        CHAT_MESSAGES_PER_SECOND: '200',
        CHAT_DRAIN_SECONDS: '1',
      },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let buf = '';
    const timer = setTimeout(() => reject(new Error('chat-runtime did not start within 30s')), 30000);
    child.stdout.on('data', (d) => {
      buf += d;
      if (buf.includes('chat runtime started')) { clearTimeout(timer); resolve(child); }
    });
    child.on('exit', (code) => { clearTimeout(timer); if (!buf.includes('chat runtime started')) reject(new Error('chat-runtime exited with ' + code)); });
  });
}

before(async () => {
  assert.ok(BIN, 'CHAT_RUNTIME_BIN is not set: run with make test');
  assert.ok(ADMIN_URL, 'CHORUS_TEST_DATABASE_URL is not set: run with make test');
  const name = 'web_' + Date.now().toString(36) + process.pid;
  execFileSync('psql', [ADMIN_URL, '-q', '-c', `CREATE DATABASE "${name}"`]);
  dbUrl = ADMIN_URL.replace(/\/[^/]*$/, '/' + name);
  port = await freePort();
  runtime = await startRuntime();
  mkdirSync(SHOTS, {recursive: true});
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  if (browser) await browser.close();
  if (runtime) runtime.kill('SIGKILL');
});

async function signUp(name) {
  const context = await browser.newContext({viewport: {width: 1100, height: 700}});
  const page = await context.newPage();
  page.on('pageerror', (e) => { throw e; });
  page.socketUrls = [];
  page.on('websocket', (ws) => page.socketUrls.push(ws.url()));
  await page.goto(`http://127.0.0.1:${port}/`);
  await page.fill('#username', name);
  await page.fill('#password', 'password-' + name);
  await page.click('#signup');
  await page.waitForSelector('#chat:not([hidden])', {timeout: T});
  await page.waitForSelector('#status[data-state=online]', {timeout: T});
  // The token stays out of URLs (one-time ticket) and out of localStorage.
  assert.ok(page.socketUrls.length > 0);
  for (const url of page.socketUrls) {
    assert.match(url, /\/ws\?ticket=/);
    assert.doesNotMatch(url, /access_token/);
  }
  assert.equal(await page.evaluate(() => localStorage.getItem('chorus.token')), null);
  assert.ok(await page.evaluate(() => sessionStorage.getItem('chorus.token')));
  return page;
}

async function apiAs(page, method, path, body) {
  return page.evaluate(async ([method, path, body]) => {
    const res = await fetch(path, {method, headers: {'content-type': 'application/json', authorization: 'Bearer ' + sessionStorage.getItem('chorus.token')}, body: body ? JSON.stringify(body) : undefined});
    return {status: res.status, body: await res.json()};
  }, [method, path, body]);
}

test('sign up, chat between two people, typing, presence, history, reconnect', async () => {
  const alice = await signUp('alice');
  // Alice creates a public room.
  await alice.fill('#new-room-name', 'lobby');
  await alice.click('#new-room button[type=submit]');
  await alice.waitForSelector('#room-title:text("# lobby")', {timeout: T});

  // Bob signs up, sees the public room, joins it.
  const bob = await signUp('bob');
  await bob.click('#public-rooms li:has-text("lobby")');
  await bob.waitForSelector('#room-title:text("# lobby")', {timeout: T});

  // Alice types: Bob sees it.
  await alice.click('#rooms li:has-text("lobby")');
  await alice.type('#message', 'hel');
  await bob.waitForSelector('#typing:has-text("alice is typing")', {timeout: T});
  // Alice sends: Bob sees the message; typing clears.
  await alice.fill('#message', 'hello bob');
  await alice.press('#message', 'Enter');
  await bob.waitForSelector('.message:has-text("hello bob")', {timeout: T});
  await bob.waitForFunction(() => document.getElementById('typing').textContent === '', null, {timeout: T});
  // Bob answers.
  await bob.fill('#message', 'hi alice');
  await bob.press('#message', 'Enter');
  await alice.waitForSelector('.message:has-text("hi alice")', {timeout: T});
  // Presence: each sees the other online.
  await bob.click('#rooms li:has-text("lobby")');
  await bob.waitForSelector('#presence li[data-user=alice]', {timeout: T});
  await bob.screenshot({path: join(SHOTS, 'chat-bob.png')});

  // History: 80 older messages; scrolling to the top loads more.
  const room = (await apiAs(alice, 'GET', '/api/v1/rooms')).body.rooms.find((r) => r.name === 'lobby').id;
  for (let i = 0; i < 80; i++) {
    const r = await apiAs(alice, 'POST', `/api/v1/rooms/${room}/messages`, {client_msg_id: 'bulk-' + i, body: 'bulk message ' + i});
    assert.equal(r.status, 200);
  }
  await bob.waitForSelector('.message:has-text("bulk message 79")', {timeout: T});
  const carolPage = await signUp('carol');
  await carolPage.click('#public-rooms li:has-text("lobby")');
  await carolPage.waitForSelector('.message:has-text("bulk message 79")', {timeout: T});
  const before = await carolPage.locator('.message').count();
  await carolPage.evaluate(() => { const m = document.getElementById('messages'); m.scrollTop = 0; m.dispatchEvent(new Event('scroll')); });
  await carolPage.waitForFunction((n) => document.querySelectorAll('.message').length > n, before, {timeout: T});
  await carolPage.waitForSelector('.message:has-text("hello bob")', {timeout: T});

  // Reconnect: the server dies; a message is sent while Bob is away; Bob's
  // page reconnects, resumes, and shows it exactly once.
  runtime.kill('SIGKILL');
  await bob.waitForSelector('#status[data-state=reconnecting]', {timeout: T});
  // Alice writes while disconnected: the composer clears and the message
  // shows as pending; it must go out once she is back.
  await alice.waitForSelector('#status[data-state=reconnecting]', {timeout: T});
  await alice.fill('#message', 'typed while offline');
  await alice.press('#message', 'Enter');
  await alice.waitForSelector('.message.pending:has-text("typed while offline")', {timeout: T});
  assert.equal(await alice.inputValue('#message'), '');
  runtime = await startRuntime();
  const sent = await apiAs(alice, 'POST', `/api/v1/rooms/${room}/messages`, {client_msg_id: 'while-away', body: 'sent while bob was away'});
  assert.equal(sent.status, 200);
  await bob.waitForSelector('#status[data-state=online]', {timeout: T});
  await bob.waitForSelector('.message:has-text("sent while bob was away")', {timeout: T});
  assert.equal(await bob.locator('.message:has-text("sent while bob was away")').count(), 1);
  assert.equal(await bob.locator('.message:has-text("hello bob")').count(), 1, 'no duplicate after resume');
  // The message typed offline is delivered once, and no longer pending.
  await bob.waitForSelector('.message:has-text("typed while offline")', {timeout: T});
  await alice.waitForFunction(() => !document.querySelector('.message.pending'), null, {timeout: T});
  await alice.waitForSelector('.message:has-text("typed while offline")', {timeout: T});
  assert.equal(await bob.locator('.message:has-text("typed while offline")').count(), 1, 'delivered exactly once');
  // And live delivery works again after the reconnect.
  await alice.waitForSelector('#status[data-state=online]', {timeout: T});
  await alice.fill('#message', 'welcome back');
  await alice.press('#message', 'Enter');
  await bob.waitForSelector('.message:has-text("welcome back")', {timeout: T});
  await bob.screenshot({path: join(SHOTS, 'chat-bob-after-reconnect.png')});
  console.log('screenshots in ' + SHOTS);
});

test('a wrong password is refused on the page', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`http://127.0.0.1:${port}/`);
  await page.fill('#username', 'alice');
  await page.fill('#password', 'not-her-password');
  await page.click('#login');
  await page.waitForSelector('#auth-error:has-text("wrong username or password")', {timeout: T});
});
