// A node that accepts TCP but never completes the WebSocket handshake (a stopped kvd, or any
// silent listener): connecting, and reconnecting after a drop, must end in a `timeout`
// KvError, not in an 'error' event nobody listens to, which ends the Node.js process. Runs in
// a child process so that such a crash shows as what it is.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

import { KvClient, KvError } from '../pkg/node/index.mjs';
import { silentListener } from './fake_node.mjs';

const here = (name) => new URL(name, import.meta.url).href;

const child = `
import { KvClient } from ${JSON.stringify(here('../pkg/node/index.mjs'))};
import { fakeNode, silentListener } from ${JSON.stringify(here('./fake_node.mjs'))};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const outcome = (e) => ({ name: e.name, code: e.code, message: e.message });
const out = {};

// The first connection.
const silent = await silentListener();
try {
  await KvClient.connect('ws://127.0.0.1:' + silent.port, { timeoutMs: 300, token: 'sekrit-token' });
  out.connect = 'connected';
} catch (e) {
  out.connect = outcome(e);
}
await sleep(300);

// A reconnect: the node goes away and a silent listener takes its port.
const node = await fakeNode((req) => JSON.stringify({ id: req.id, ok: true }));
const port = new URL(node.url).port;
const c = await KvClient.connect(node.url, { timeoutMs: 400, minBackoffMs: 10, maxBackoffMs: 20 });
await c.ping();
await node.close();
while (c.connected) await sleep(10); // the drop reaches the client
const silent2 = await silentListener(Number(port));
try {
  await c.get('k');
  out.get = 'answered';
} catch (e) {
  out.get = outcome(e);
}
await sleep(1000); // more reconnect attempts time out meanwhile
c.close();
await silent.close();
await silent2.close();
console.log(JSON.stringify(out));
`;

test('a connect or reconnect to a silent listener times out without crashing the process', () => {
  const run = spawnSync(process.execPath, ['--input-type=module', '-e', child], {
    cwd: fileURLToPath(new URL('..', import.meta.url)), // where node_modules/ws is
    encoding: 'utf8',
    timeout: 30_000,
  });
  assert.equal(run.status, 0, `exit ${run.status} ${run.signal ?? ''}\n${run.stderr}`);
  assert.doesNotMatch(run.stderr, /Unhandled|error/i, run.stderr);
  const out = JSON.parse(run.stdout);
  assert.equal(out.connect.name, 'KvError', JSON.stringify(out));
  assert.equal(out.connect.code, 'timeout', JSON.stringify(out));
  assert.match(out.connect.message, /within 300 ms/);
  assert.equal(out.get.code, 'timeout', JSON.stringify(out));
});

test('the same in this process: connect rejects with timeout', async () => {
  const silent = await silentListener();
  try {
    await assert.rejects(KvClient.connect(`ws://127.0.0.1:${silent.port}`, { timeoutMs: 200 }), (e) => {
      assert.ok(e instanceof KvError, String(e));
      assert.equal(e.code, 'timeout', e.message);
      return true;
    });
    // The aborted handshake reports its error on a later tick.
    await new Promise((r) => setTimeout(r, 200));
  } finally {
    await silent.close();
  }
});
