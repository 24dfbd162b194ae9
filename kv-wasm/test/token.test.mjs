// A node started with --token-file: the client's token opens the connection, a missing or
// wrong one is refused with `unauthorized` instead of a hang. Messages that show the node's
// URL show `token=***`, never the token.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';

import { KvClient, KvError } from '../pkg/node/index.mjs';
import { Cluster } from './cluster.mjs';
import { fakeNode, silentListener } from './fake_node.mjs';

let cluster;
before(async () => {
  cluster = await Cluster.start(1, (dir) => {
    const file = path.join(dir, 'tokens');
    writeFileSync(file, 'sesame\n');
    return ['--token-file', file];
  });
});
after(() => cluster?.stop());

test('a valid token connects, a missing or wrong one is unauthorized', async () => {
  for (const token of [undefined, 'wrong']) {
    await assert.rejects(KvClient.connect(cluster.url(0), { token, timeoutMs: 5000 }), (e) => {
      assert.ok(e instanceof KvError, String(e));
      assert.equal(e.code, 'unauthorized', e.message);
      return true;
    });
  }
  const c = await KvClient.connect(cluster.url(0), { token: 'sesame', timeoutMs: 5000 });
  try {
    await c.put('secret', 'kept');
    assert.deepEqual((await c.get('secret')).values, ['kept']);
  } finally {
    c.close();
  }
});

/** Asserts a KvError with `code` whose message shows the URL with its token hidden. */
const hidesToken = (code, token) => (e) => {
  assert.ok(e instanceof KvError, String(e));
  assert.equal(e.code, code, e.message);
  assert.ok(!e.message.includes(token), e.message);
  assert.match(e.message, /token=\*\*\*/);
  return true;
};

test('error messages show the URL without its token', async () => {
  const token = 'wrong-secret-4711';
  await assert.rejects(KvClient.connect(cluster.url(0), { token, timeoutMs: 5000 }),
    hidesToken('unauthorized', token));
  // A token written into the URL itself is hidden too.
  await assert.rejects(KvClient.connect(`${cluster.url(0)}/?token=${token}`, { timeoutMs: 5000 }),
    hidesToken('unauthorized', token));

  const silent = await silentListener();
  try {
    await assert.rejects(KvClient.connect(`ws://127.0.0.1:${silent.port}`, { token, timeoutMs: 200 }),
      hidesToken('timeout', token));
    await new Promise((r) => setTimeout(r, 100)); // the aborted handshake settles
  } finally {
    await silent.close();
  }

  // A node that never answers (request timeout), then one that drops the connection.
  const node = await fakeNode(() => null);
  const c = await KvClient.connect(node.url, { token, timeoutMs: 300, reconnect: false });
  try {
    await assert.rejects(c.get('k'), hidesToken('timeout', token));
    const sent = c.get('k');
    await new Promise((r) => setTimeout(r, 50));
    await node.close();
    await assert.rejects(sent, hidesToken('unavailable', token));
  } finally {
    c.close();
  }
});
