// The Node.js package over wss:// against a 2-node cluster that requires client certificates
// (kvd --tls-require-client-cert): the SDK takes a WebSocket class, here the `ws` package's
// with the cluster CA and a client certificate; without them the connection is refused with a
// KvError instead of a hang.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

import WebSocket from 'ws';

import { KvClient, KvError, reconcile } from '../pkg/node/index.mjs';
import { Cluster } from './cluster.mjs';

let cluster;
before(async () => {
  cluster = await Cluster.start(2, () => [], { tls: true });
});
after(() => cluster?.stop());

/** A WebSocket class that dials with these TLS options. */
function tlsWebSocket(options) {
  return class extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, options);
    }
  };
}

test('over wss:// with a client certificate: writes replicate, siblings reconcile', async () => {
  const { ca, clientCert, clientKey } = cluster.tls;
  const Trusting = tlsWebSocket({ ca: readFileSync(ca), cert: readFileSync(clientCert), key: readFileSync(clientKey) });
  assert.ok(cluster.url(0).startsWith('wss://'));
  const a = await KvClient.connect(cluster.url(0), { WebSocket: Trusting, timeoutMs: 5000 });
  const b = await KvClient.connect(cluster.url(1), { WebSocket: Trusting, timeoutMs: 5000 });
  try {
    await a.put('tls-key', 'from a', { w: 2 });
    await b.put('tls-key', 'from b', { w: 2 }); // blind: a sibling of the first
    const got = await a.get('tls-key', { r: 2 });
    assert.deepEqual([...got.values].sort(), ['from a', 'from b']);
    const merged = reconcile(got.values, (values) => [...values].sort().join('+'));
    await a.put('tls-key', merged, { context: got.context, w: 2 });
    assert.deepEqual((await b.get('tls-key', { r: 2 })).values, ['from a+from b']);
  } finally {
    a.close();
    b.close();
  }
});

test('without a client certificate, or without trusting the CA, the connection is refused', async () => {
  const { ca } = cluster.tls;
  const attempts = [
    tlsWebSocket({ ca: readFileSync(ca) }), // no client certificate
    tlsWebSocket({}), // the system's roots: the cluster CA is unknown
  ];
  for (const Impl of attempts) {
    await assert.rejects(
      KvClient.connect(cluster.url(0), { WebSocket: Impl, timeoutMs: 5000, reconnect: false }),
      (e) => {
        assert.ok(e instanceof KvError, String(e));
        assert.equal(e.code, 'unavailable', e.message);
        return true;
      },
    );
  }
});
