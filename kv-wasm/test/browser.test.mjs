// The browser package in a real headless Chromium (native WebSocket, wasm fetched over HTTP)
// against a one-node cluster. Skipped when no Chromium is installed (Debian: apt-get install
// chromium).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { Cluster } from './cluster.mjs';

const webPkg = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'pkg', 'web');
const chromium = ['chromium', 'chromium-browser', 'google-chrome']
  .find((bin) => spawnSync(bin, ['--version'], { stdio: 'ignore' }).status === 0);

const types = { '.js': 'text/javascript', '.wasm': 'application/wasm', '.html': 'text/html' };

/** The page: connects, writes, reads, reconciles, then posts what it saw to /result. */
function page(wsUrl) {
  return `<!doctype html><meta charset="utf-8"><script type="module">
let result;
try {
  const { KvClient, reconcile, compareContexts, KvError } = await import('./index.js');
  const c = await KvClient.connect(${JSON.stringify(wsUrl)}, { timeoutMs: 5000 });
  const put = await c.put('browser', 'from chromium');
  await c.put('browser-bytes', new Uint8Array([255, 0, 1]));
  const got = await c.get('browser');
  const bytes = await c.get('browser-bytes');
  let corrupt = null;
  try { await c.put('browser', 'x', { context: 'garbage!!' }); } catch (e) { corrupt = e instanceof KvError && e.code; }
  c.close();
  result = {
    values: got.values,
    bytes: Array.from(bytes.values[0]),
    cmp: compareContexts(put.context, got.context),
    union: reconcile(['[1,2]', '[2,3]'], 'union'),
    corrupt,
  };
} catch (e) {
  result = { error: String(e && e.stack || e) };
}
await fetch('/result', { method: 'POST', body: JSON.stringify(result) });
</script>`;
}

let cluster;
let server;
let browser;
let profile;

before(async () => {
  if (chromium) cluster = await Cluster.start(1);
});
/** Chromium runs in its own process group: kill the group, renderers and all. */
function killBrowser() {
  if (!browser || browser.exitCode !== null || browser.signalCode !== null) return null;
  const exited = new Promise((r) => browser.once('exit', r));
  try {
    process.kill(-browser.pid, 'SIGKILL');
  } catch {
    browser.kill('SIGKILL');
  }
  return exited;
}
process.on('exit', killBrowser);

after(async () => {
  await killBrowser();
  server?.close();
  cluster?.stop();
  if (profile) rmSync(profile, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
});

test('the web package works in headless Chromium', async () => {
  // tests/run-all.sh installs Debian's chromium; without it this test must fail, not pass.
  assert.ok(chromium, 'no chromium found (apt-get install -y chromium; tests/run-all.sh does)');
  let deliver;
  const posted = new Promise((resolve) => { deliver = resolve; });
  server = createServer((req, res) => {
    if (req.method === 'POST' && req.url === '/result') {
      let body = '';
      req.on('data', (c) => { body += c; });
      req.on('end', () => { res.end('ok'); deliver(JSON.parse(body)); });
      return;
    }
    if (req.url === '/' || req.url === '/index.html') {
      res.setHeader('content-type', 'text/html');
      res.end(page(cluster.url(0)));
      return;
    }
    const file = path.join(webPkg, path.normalize(req.url).replace(/^(\.\.[/\\])+/, ''));
    try {
      const data = readFileSync(file);
      res.setHeader('content-type', types[path.extname(file)] ?? 'application/octet-stream');
      res.end(data);
    } catch {
      res.statusCode = 404;
      res.end();
    }
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${server.address().port}/`;
  profile = mkdtempSync(path.join(tmpdir(), 'kv-wasm-chromium-'));
  browser = spawn(chromium, [
    '--headless=new', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-extensions',
    `--user-data-dir=${profile}`, url,
  ], { stdio: 'ignore', detached: true });
  let timer;
  const result = await Promise.race([
    posted,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error('no result from the page within 60 s')), 60_000);
    }),
  ]).finally(() => clearTimeout(timer));
  assert.equal(result.error, undefined, result.error);
  assert.deepEqual(result.values, ['from chromium']);
  assert.deepEqual(result.bytes, [255, 0, 1]);
  assert.equal(result.cmp, 'equal');
  assert.equal(result.union, '[1,2,3]');
  assert.equal(result.corrupt, 'bad_request');
});
