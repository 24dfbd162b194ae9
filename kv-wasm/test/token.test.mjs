// A node started with --token-file: the client's token opens the connection, a missing or
// wrong one is refused with `unauthorized` instead of a hang.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';

import { KvClient, KvError } from '../pkg/node/index.mjs';
import { Cluster } from './cluster.mjs';

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
