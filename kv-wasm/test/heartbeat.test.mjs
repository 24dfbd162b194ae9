// The heartbeat: a connection quiet for `heartbeatMs` is pinged, and one that stays silent
// (a stopped node, a partition: TCP says nothing for many minutes) is dropped and replaced,
// so the client serves again as soon as the node does, instead of timing out on a dead socket.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { KvClient, KvError } from '../pkg/node/index.mjs';
import { fakeNode } from './fake_node.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const ok = (req) => JSON.stringify({ id: req.id, ok: true, node: 'fake' });
/** Pings that reached the fake node on `connection`. */
const heartbeats = (node, connection) =>
  node.requests.filter((r) => r.op === 'ping' && r.connection === connection).length;

test('an idle connection is pinged and stays up', async () => {
  const node = await fakeNode(ok);
  const c = await KvClient.connect(node.url, { heartbeatMs: 100, timeoutMs: 1000 });
  try {
    await sleep(700);
    assert.ok(heartbeats(node, 1) >= 3, `pings: ${JSON.stringify(node.requests)}`);
    assert.equal(node.connections, 1);
    assert.ok(c.connected);
  } finally {
    c.close();
    await node.close();
  }
});

test('heartbeatMs: 0 sends nothing on its own', async () => {
  const node = await fakeNode(ok);
  const c = await KvClient.connect(node.url, { heartbeatMs: 0 });
  try {
    await sleep(400);
    assert.equal(node.requests.length, 0, JSON.stringify(node.requests));
  } finally {
    c.close();
    await node.close();
  }
});

test('a connection that goes silent is dropped and replaced by a live one', async () => {
  // The first connection stops answering after its first request; later ones answer.
  let answered = 0;
  const node = await fakeNode((req, _text, connection) => {
    if (connection === 1 && answered++ >= 1) return null;
    return ok(req);
  });
  const c = await KvClient.connect(node.url, { heartbeatMs: 100, timeoutMs: 300, minBackoffMs: 10 });
  try {
    await c.ping(); // the one request the first connection answers
    // Sent on the silent connection: it fails (its timeout, or the drop, whichever is first).
    await assert.rejects(c.put('k', 'v'), (e) => {
      assert.ok(e instanceof KvError, String(e));
      assert.ok(['timeout', 'unavailable'].includes(e.code), e.message);
      return true;
    });
    const deadline = Date.now() + 5000;
    while (node.connections < 2) {
      assert.ok(Date.now() < deadline, 'the silent connection was never replaced');
      await sleep(20);
    }
    // Pinged before being dropped: beside the test's own ping, the heartbeat's.
    assert.ok(heartbeats(node, 1) >= 2, JSON.stringify(node.requests));
    // The new connection serves.
    const answer = await c.ping();
    assert.equal(answer.node, 'fake');
    assert.ok(c.connected);
  } finally {
    c.close();
    await node.close();
  }
});
