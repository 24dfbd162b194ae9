// The web console in headless Chromium (driven by playwright-core) against a real 3-node kvd
// cluster: it lists the nodes up, shows a SIGKILLed node down, writes through the page what
// kvcli reads back, shows two concurrent writes as 2 siblings and resolves them, and throws no
// error. A screenshot is kept under test-artifacts/ (its path is printed).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { chromium } from 'playwright-core';
// The same real-cluster helper as the SDK's tests.
import { Cluster } from '../../kv-wasm/test/cluster.mjs';

const run = promisify(execFile);
const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const kvcliBin = process.env.KVCLI_BIN ?? path.join(repoRoot, 'target', 'debug', 'kvcli');
const chromiumBin = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const artifacts = path.join(repoRoot, 'test-artifacts');
const wwwDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

let cluster;
let context;
let page;
let profile;
/** Uncaught exceptions and console errors of the page. */
const pageErrors = [];

/** Runs kvcli --json against node `i`; resolves with the parsed answer. */
async function kvcli(i, ...args) {
  const { stdout } = await run(kvcliBin, ['--node', cluster.url(i), '--json', ...args], { timeout: 20_000 });
  return JSON.parse(stdout);
}

before(async () => {
  cluster = await Cluster.start(3, () => ['--www-dir', wwwDir, '--sdk-dir', path.join(repoRoot, 'kv-wasm', 'pkg', 'web')]);
  profile = mkdtempSync(path.join(tmpdir(), 'kv-console-chromium-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: chromiumBin,
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
    viewport: { width: 1400, height: 1000 },
  });
  page = context.pages()[0] ?? await context.newPage();
  page.on('pageerror', (e) => pageErrors.push(`uncaught: ${e.stack || e.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error') pageErrors.push(`console.error: ${msg.text()}`);
  });
  await page.goto(`http://127.0.0.1:${cluster.nodes[0].port}/`);
});

after(async () => {
  await context?.close().catch(() => {});
  cluster?.stop();
  if (profile) rmSync(profile, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
});

/** Waits until the node card of `id` shows `state`. */
function cardState(id, state, timeout) {
  return page.waitForSelector(`.node-card[data-node="${id}"][data-state="${state}"]`, { timeout });
}

/** Types a key and presses Get; waits for the page to show that key's siblings. */
async function pageGet(key) {
  await page.fill('#key', key);
  await page.click('#btn-get');
  await page.waitForFunction((k) => document.querySelector('.key-name')?.textContent === k, key);
}

const siblingCount = () => page.textContent('#sibling-count');

test('the page lists the 3 nodes up, with the ring drawn', async () => {
  for (const id of ['n1', 'n2', 'n3']) await cardState(id, 'up', 15_000);
  await page.waitForSelector('#ring path.vnode');
  const vnodes = await page.$$eval('#ring path.vnode', (ps) => ps.map((p) => p.dataset.node));
  const ring = await kvcli(0, 'ring');
  assert.ok(vnodes.length > 3, `the ring shows ${vnodes.length} vnodes`);
  assert.deepEqual([...new Set(vnodes)].sort(), ['n1', 'n2', 'n3']);
  if (Array.isArray(ring.vnodes)) assert.equal(vnodes.length, ring.vnodes.length);
  assert.equal(await page.$$eval('#legend .swatch', (s) => s.length), 3);
});

test('a put through the page reads back through kvcli', async () => {
  await page.fill('#key', 'console-key');
  await page.fill('#value', 'written in the browser');
  await page.click('#btn-put');
  await page.waitForFunction(() => document.querySelector('.key-name')?.textContent === 'console-key'
    && document.querySelector('#siblings .value')?.textContent === 'written in the browser');
  const got = await kvcli(1, 'get', 'console-key');
  assert.equal(got.found, true);
  assert.deepEqual(got.values, ['written in the browser']);
  // The key's preference list is highlighted: numbered badges on the ring, ranks on the cards.
  const pref = await kvcli(0, 'ring', '--key', 'console-key');
  await page.waitForFunction((n) => document.querySelectorAll('#ring .pref-badge').length === n, pref.preference_list.length);
  const ranks = await page.$$eval('.node-card', (cards) => cards
    .filter((c) => c.querySelector('.pref-rank'))
    .sort((a, b) => a.querySelector('.pref-rank').textContent.localeCompare(b.querySelector('.pref-rank').textContent))
    .map((c) => c.dataset.node));
  assert.deepEqual(ranks, pref.preference_list);
});

test('a put with a time to live shows its expiry, then reads as not found', async () => {
  await page.fill('#key', 'console-ttl');
  await page.fill('#value', 'short-lived');
  await page.fill('#ttl', '1');
  await page.click('#btn-put');
  await page.waitForFunction(() => document.querySelector('.key-name')?.textContent === 'console-ttl'
    && document.querySelector('#siblings .written')?.textContent.includes('expires'));
  await page.fill('#ttl', '');
  await new Promise((r) => setTimeout(r, 1300));
  const got = await kvcli(1, 'get', 'console-ttl');
  assert.equal(got.found, false);
  await page.click('#btn-get');
  await page.waitForFunction(() => document.querySelector('#found')?.textContent === 'not found');
});

test('Incr adds to the key\'s counter, which kvcli reads back', async () => {
  await page.fill('#key', 'console-counter');
  await page.fill('#by', '5');
  await page.click('#btn-incr');
  await page.waitForFunction(() => document.querySelector('.key-name')?.textContent === 'console-counter'
    && document.querySelector('#siblings .value')?.textContent === '5');
  await kvcli(2, 'incr', 'console-counter', '-2');
  await page.fill('#by', '');
  await page.click('#btn-incr');
  await page.waitForFunction(() => document.querySelector('#siblings .value')?.textContent === '4'
    && document.querySelector('#siblings .written')?.textContent.startsWith('counter'));
  const got = await kvcli(1, 'get', 'console-counter');
  assert.equal(got.counter, 4);
  assert.deepEqual(got.values, ['4']);
});

test('two concurrent writes show 2 siblings; keeping one leaves one', async () => {
  // Blind writes through two coordinators are concurrent.
  await kvcli(0, 'put', 'conflict', 'from n1');
  await kvcli(1, 'put', 'conflict', 'from n2');
  await pageGet('conflict');
  assert.equal(await siblingCount(), '2');
  const shown = await page.$$eval('#siblings .value', (vs) => vs.map((v) => v.textContent).sort());
  assert.deepEqual(shown, ['from n1', 'from n2']);
  const kept = await page.textContent('#siblings li:nth-child(2) .value');
  await page.click('#siblings li:nth-child(2) button.keep');
  await page.waitForFunction(() => document.querySelector('#sibling-count')?.textContent === '1');
  const got = await kvcli(2, 'get', 'conflict');
  assert.deepEqual(got.values, [kept]);
});

test('siblings resolved with the built-in union strategy (kv-wasm in the page)', async () => {
  await kvcli(0, 'put', 'tags', '["a","b"]');
  await kvcli(1, 'put', 'tags', '["b","c"]');
  await pageGet('tags');
  assert.equal(await siblingCount(), '2');
  await page.selectOption('#strategy', 'union');
  await page.click('#btn-reconcile');
  await page.waitForFunction(() => document.querySelector('#merge-value').value.includes('c'));
  const merged = JSON.parse(await page.inputValue('#merge-value'));
  assert.deepEqual([...merged].sort(), ['a', 'b', 'c']);
  await page.click('#btn-write-merge');
  await page.waitForFunction(() => document.querySelector('#sibling-count')?.textContent === '1');
  const got = await kvcli(2, 'get', 'tags');
  assert.equal(got.values.length, 1);
  assert.deepEqual(JSON.parse(got.values[0]).sort(), ['a', 'b', 'c']);
});

test('a SIGKILLed node turns down in the page', async () => {
  const killedAt = Date.now();
  await cluster.kill(2);
  await cardState('n3', 'down', 30_000);
  console.log(`# n3 shown down ${((Date.now() - killedAt) / 1000).toFixed(1)} s after SIGKILL`);
  await cardState('n1', 'up', 1000);
  await cardState('n2', 'up', 1000);
  // The page keeps working with a node down: a read of the earlier key still succeeds.
  await pageGet('console-key');
  assert.equal(await siblingCount(), '1');
});

test('a screenshot is kept; no error so far', async () => {
  // Let the activity charts gather a few scrapes for the screenshot.
  await page.waitForFunction(() => document.querySelectorAll('#chart-ops path.line').length > 0, null, { timeout: 15_000 });
  mkdirSync(artifacts, { recursive: true });
  const shot = path.join(artifacts, 'console.png');
  await page.screenshot({ path: shot, fullPage: true });
  console.log(`# screenshot: ${shot}`);
  const shown = await page.$$eval('#errors .error', (es) => es.map((e) => e.textContent));
  assert.deepEqual(shown, [], 'errors shown in the page');
  assert.deepEqual(pageErrors, []);
});

test('a server error appears in the page as a readable message', async () => {
  // With two of three nodes gone, a write cannot reach W = 2 replicas.
  await cluster.kill(1);
  await page.fill('#key', 'no-quorum');
  await page.fill('#value', 'lost?');
  await page.click('#btn-put');
  const shown = await page.waitForSelector('#errors .error', { timeout: 20_000 });
  const text = await shown.textContent();
  assert.match(text, /^put: (unavailable|timeout) — \S/, text);
  console.log(`# shown: ${text.replace(/×$/, '')}`);
  assert.deepEqual(pageErrors, [], 'no uncaught exception or console error in the page');
});

test('on a node with --token-file, the console opened with ?token=T works through the token', async () => {
  const guarded = await Cluster.start(1, (dir) => {
    const tokens = path.join(dir, 'tokens');
    writeFileSync(tokens, 'console-token-123 rw\n');
    return ['--token-file', tokens, '--www-dir', wwwDir, '--sdk-dir', path.join(repoRoot, 'kv-wasm', 'pkg', 'web')];
  });
  const tab = await context.newPage();
  try {
    await tab.goto(`http://127.0.0.1:${guarded.nodes[0].port}/?token=console-token-123`);
    await tab.waitForSelector('.node-card[data-node="n1"][data-state="up"]', { timeout: 15_000 });
    await tab.fill('#key', 'guarded-key');
    await tab.fill('#value', 'through the token');
    await tab.click('#btn-put');
    await tab.waitForFunction(() => document.querySelector('#siblings .value')?.textContent === 'through the token');
    const { stdout } = await run(kvcliBin, ['--node', guarded.url(0), '--token', 'console-token-123', '--json', 'get', 'guarded-key'], { timeout: 20_000 });
    assert.deepEqual(JSON.parse(stdout).values, ['through the token']);
  } finally {
    await tab.close().catch(() => {});
    guarded.stop();
  }
});

test('a member whose status says disk_full or storage_failed is marked on its card', async () => {
  // The status answer is real except for n2's disk_full, set on its way to the page: filling a
  // disk needs a small volume of its own (tests/tests/disk_full.rs checks that status answers
  // it for a really full node); this checks what the console makes of it.
  const tab = await context.newPage();
  try {
    await tab.routeWebSocket(() => true, (ws) => {
      const server = ws.connectToServer();
      ws.onMessage((m) => server.send(m));
      server.onMessage((m) => {
        let answer;
        try {
          answer = JSON.parse(m);
        } catch {
          ws.send(m);
          return;
        }
        for (const n of Array.isArray(answer.nodes) ? answer.nodes : []) {
          if (n.id === 'n2' && 'disk_full' in n) {
            n.disk_full = true;
            n.disk_full_reason = 'flush held up: No space left on device <b>';
          }
          if (n.id === 'n3' && 'storage_failed' in n) n.storage_failed = true;
        }
        ws.send(JSON.stringify(answer));
      });
    });
    await tab.goto(`http://127.0.0.1:${cluster.nodes[0].port}/`);
    const card = await tab.waitForSelector('.node-card[data-node="n2"][data-disk-full="true"]', { timeout: 15_000 });
    assert.match(await card.textContent(), /disk full: writes refused/);
    // The reason is there on hover, as text.
    assert.equal(await card.$eval('.disk-full-note', (e) => e.title), 'flush held up: No space left on device <b>');
    assert.equal(await tab.$('.node-card[data-node="n1"][data-disk-full]'), null);
    assert.equal(await tab.$('.node-card[data-node="n1"] .disk-full-note'), null);
    // n3's storage failed (tests/tests/disk_error.rs makes a real one): its card says so.
    const failed = await tab.waitForSelector('.node-card[data-node="n3"][data-storage-failed="true"]', { timeout: 15_000 });
    assert.match(await failed.textContent(), /storage failed: writes refused until the node is restarted/);
    assert.equal(await tab.$('.node-card[data-node="n2"][data-storage-failed]'), null);
    // Each card also shows the free space its node reports (the real figure: n1 is not full).
    assert.match(await tab.textContent('.node-card[data-node="n1"] .disk'), /· [\d.]+ (KiB|MiB|GiB|TiB)$/);
  } finally {
    await tab.close().catch(() => {});
  }
});
