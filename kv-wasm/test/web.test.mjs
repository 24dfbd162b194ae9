// The browser package's wasm glue (wasm-bindgen --target web) and client, driven from Node.js:
// the module is instantiated from its bytes (a browser would fetch it) and talks to a real
// one-node cluster through the `ws` package standing in for the browser's WebSocket.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import WebSocket from 'ws';

import * as wasm from '../pkg/web/kv_wasm.js';
import { createSdk } from '../pkg/web/client.js';
import { Cluster } from './cluster.mjs';

wasm.initSync({ module: readFileSync(new URL('../pkg/web/kv_wasm_bg.wasm', import.meta.url)) });
const sdk = createSdk(wasm, async () => WebSocket);

let cluster;
before(async () => {
  cluster = await Cluster.start(1);
});
after(() => cluster?.stop());

test('the web build reconciles and talks to a node', async () => {
  assert.equal(sdk.reconcile(['[1]', '[2]'], 'union'), '[1,2]');
  const c = await sdk.KvClient.connect(cluster.url(0), { timeoutMs: 5000 });
  try {
    const put = await c.put('web', 'from the browser build');
    const got = await c.get('web');
    assert.deepEqual(got.values, ['from the browser build']);
    assert.equal(sdk.compareContexts(put.context, got.context), 'equal');
  } finally {
    c.close();
  }
});
