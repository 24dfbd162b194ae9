// The Node.js package against a real 3-node kvd cluster started by this file.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { KvClient, KvError, compareContexts, encodePut, reconcile } from '../pkg/node/index.mjs';
import { Cluster, freePort } from './cluster.mjs';

let cluster;
const clients = [];

async function connect(i, options = {}) {
  const c = await KvClient.connect(cluster.url(i), { timeoutMs: 5000, ...options });
  clients.push(c);
  return c;
}

before(async () => {
  cluster = await Cluster.start(3);
});

after(() => {
  for (const c of clients) c.close();
  cluster?.stop();
});

describe('kv-wasm SDK against a 3-node cluster', () => {
  test('put then get returns the value and a context', async () => {
    const c = await connect(0);
    const put = await c.put('greeting', 'hello world');
    assert.equal(typeof put.context, 'string');
    assert.ok(put.context.length > 0);
    const got = await c.get('greeting');
    assert.equal(got.found, true);
    assert.deepEqual(got.values, ['hello world']);
    assert.equal(got.siblings.length, 1);
    assert.equal(typeof got.siblings[0].timestampMs, 'number');
    assert.equal(compareContexts(put.context, got.context), 'equal');

    const missing = await c.get('never-written');
    assert.equal(missing.found, false);
    assert.deepEqual(missing.values, []);
  });

  test('Uint8Array values travel as bytes and strings stay strings', async () => {
    const c = await connect(1);
    const bytes = new Uint8Array([0xff, 0x00, 0xfe, 0x80]);
    await c.put('bin', bytes);
    const got = await c.get('bin');
    assert.ok(got.values[0] instanceof Uint8Array);
    assert.deepEqual([...got.values[0]], [...bytes]);
    await c.put('text', 'héllo ✓');
    assert.deepEqual((await c.get('text')).values, ['héllo ✓']);
    const asBytes = await c.get('text', { binary: true });
    assert.deepEqual([...asBytes.values[0]], [...new TextEncoder().encode('héllo ✓')]);
  });

  test('a Uint8Array of control bytes travels as base64, not as six-fold escaped text', async () => {
    const c = await connect(0);
    // Valid UTF-8, but each byte escapes to six ("\u0001"): 4.2 MB as text, over the 2 MiB
    // frame limit; 0.93 MB in base64.
    const ones = new Uint8Array(700 * 1024).fill(1);
    await c.put('control-bytes', ones);
    const got = await c.get('control-bytes', { binary: true });
    assert.equal(got.values.length, 1);
    assert.ok(Buffer.from(got.values[0]).equals(Buffer.from(ones)), 'the bytes read back differ');
    // Bytes take the shorter form, strings stay strings.
    assert.match(encodePut(1, 'k', new Uint8Array(30).fill(1)), /"value_b64":/);
    assert.match(encodePut(1, 'k', new TextEncoder().encode('plain text')), /"value":"plain text"/);
    assert.match(encodePut(1, 'k', '\u0001'.repeat(30)), /"value":"(\\u0001)+"/);
  });

  test('many requests in flight on one connection are matched by id', async () => {
    const c = await connect(2);
    const n = 200;
    await Promise.all(Array.from({ length: n }, (_, i) => c.put(`inflight-${i}`, `value-${i}`)));
    const reads = await Promise.all(Array.from({ length: n }, (_, i) => c.get(`inflight-${i}`)));
    reads.forEach((r, i) => assert.deepEqual(r.values, [`value-${i}`]));
  });

  test('two clients writing from the same context produce 2 siblings', async () => {
    const a = await connect(0);
    const b = await connect(1);
    await a.put('cart', 'v0');
    const { context } = await a.get('cart');
    await a.put('cart', 'from-a', { context });
    await b.put('cart', 'from-b', { context });
    const got = await a.get('cart');
    assert.equal(got.siblings.length, 2, JSON.stringify(got));
    assert.deepEqual([...got.values].sort(), ['from-a', 'from-b']);
    // lww picks the sibling with the newest timestamp.
    const newest = got.siblings.reduce((x, y) => (y.timestampMs >= x.timestampMs ? y : x));
    assert.equal(reconcile(got, 'lww'), newest.value);
    // A write with the context of that read replaces both.
    await a.put('cart', 'resolved', { context: got.context });
    assert.deepEqual((await b.get('cart')).values, ['resolved']);
  });

  test('update with the union resolver leaves one value holding both', async () => {
    const a = await connect(0);
    const b = await connect(2);
    const first = await a.put('list', JSON.stringify(['milk']));
    const { context } = await a.get('list');
    await a.put('list', JSON.stringify(['milk', 'eggs']), { context });
    await b.put('list', JSON.stringify(['milk', 'bread']), { context });
    assert.equal((await a.get('list')).siblings.length, 2);

    const done = await b.update('list', 'union');
    const got = await a.get('list');
    assert.equal(got.siblings.length, 1, JSON.stringify(got));
    assert.deepEqual(JSON.parse(got.values[0]).sort(), ['bread', 'eggs', 'milk']);
    assert.equal(done.value, got.values[0]);

    // The first write's context is older than the context after the update.
    assert.equal(compareContexts(first.context, got.context), 'before');
    assert.equal(compareContexts(got.context, first.context), 'after');
  });

  test('update retries when someone else wrote in between', async () => {
    const a = await connect(0);
    const b = await connect(1);
    await a.put('race', JSON.stringify(['a']));
    let calls = 0;
    const done = await a.update('race', async (values, read) => {
      calls += 1;
      if (calls === 1) {
        // Another writer saw the same version and writes before our write-back.
        await b.put('race', JSON.stringify(['a', 'x']), { context: read.context });
      }
      const set = JSON.parse(reconcile(values, 'union'));
      return JSON.stringify([...set, 'b'].filter((v, i, all) => all.indexOf(v) === i));
    });
    assert.equal(calls, 2, 'the resolver ran again on the siblings the race left');
    const got = await b.get('race');
    assert.equal(got.siblings.length, 1, JSON.stringify(got));
    assert.deepEqual(JSON.parse(got.values[0]).sort(), ['a', 'b', 'x']);
    assert.equal(done.value, got.values[0]);
  });

  test('update with a function resolver (shopping-cart merge) on a new key', async () => {
    const c = await connect(1);
    const add = (item) => (values) => {
      const cart = JSON.parse(reconcile(values, 'merge'));
      cart[item] = (cart[item] ?? 0) + 1;
      return JSON.stringify(cart);
    };
    await c.update('cart-fn', add('apple'));
    const done = await c.update('cart-fn', add('pear'));
    assert.deepEqual(JSON.parse(done.value), { apple: 1, pear: 1 });
    await assert.rejects(c.update('cart-fn', () => undefined), (e) => e instanceof KvError && e.code === 'bad_request');
  });

  test('delete leaves a tombstone whose context a later write supersedes', async () => {
    const c = await connect(0);
    await c.put('gone', 'x');
    const read = await c.get('gone');
    await c.delete('gone', { context: read.context });
    const after = await c.get('gone');
    assert.equal(after.found, false);
    assert.deepEqual(after.values, []);
    await c.put('gone', 'back', { context: after.context });
    assert.deepEqual((await c.get('gone')).values, ['back']);
  });

  test('delete without a context deletes every sibling a read finds', async () => {
    const [a, b] = [await connect(0), await connect(1)];
    await a.put('both', 'one');
    await b.put('both', 'two');
    assert.equal((await a.get('both', { r: 3 })).values.length, 2);
    await b.delete('both');
    const after = await a.get('both', { r: 3 });
    assert.equal(after.found, false);
    assert.deepEqual(after.values, []);
  });

  test('a value put with ttlSeconds carries its expiry and then reads as deleted', async () => {
    const c = await connect(0);
    const before = Date.now();
    await c.put('short-lived', 'soon gone', { ttlSeconds: 1, w: 3 });
    const got = await c.get('short-lived');
    assert.deepEqual(got.values, ['soon gone']);
    const at = got.siblings[0].expiresAtMs;
    assert.ok(at >= before + 900 && at <= Date.now() + 1100, `expires at ${at}`);
    await new Promise((r) => setTimeout(r, 1300));
    const after = await c.get('short-lived');
    assert.equal(after.found, false);
    assert.deepEqual(after.values, []);
    for (const bad of [0, 0.5, -1]) {
      await assert.rejects(c.put('short-lived', 'v', { ttlSeconds: bad }), (e) => {
        assert.ok(e instanceof KvError, String(e));
        assert.equal(e.code, 'bad_request', e.message);
        return true;
      });
    }
  });

  test('incr counts increments made through different nodes, and get shows the counter', async () => {
    const [a, b, c] = [await connect(0), await connect(1), await connect(2)];
    const results = await Promise.all(
      Array.from({ length: 30 }, (_, i) => [a, b, c][i % 3].incr('visits', i % 2 ? 2 : -1)),
    );
    for (const r of results) {
      assert.equal(typeof r.value, 'number');
      assert.equal(typeof r.context, 'string');
    }
    const got = await b.get('visits', { r: 3 });
    assert.equal(got.counter, 15, JSON.stringify(got));
    assert.deepEqual(got.values, ['15']);
    assert.equal(got.siblings[0].counter, true);
    assert.equal((await c.incr('visits')).value, 16);
    await a.put('text', 'words');
    await assert.rejects(a.incr('text'), (e) => {
      assert.ok(e instanceof KvError, String(e));
      assert.equal(e.code, 'bad_request', e.message);
      assert.match(e.message, /not a counter/);
      return true;
    });
    for (const bad of [0.5, 2 ** 60]) {
      await assert.rejects(a.incr('visits', bad), (e) => e instanceof KvError && e.code === 'bad_request');
    }
  });

  test('a corrupt context is an error, not a crash', async () => {
    const c = await connect(0);
    for (const bad of ['garbage!!', 'AQ', 'AQIBYQE']) {
      await assert.rejects(c.put('k', 'v', { context: bad }), (e) => {
        assert.ok(e instanceof KvError, String(e));
        assert.equal(e.code, 'bad_request');
        assert.match(e.message, /context/);
        return true;
      });
    }
    assert.throws(() => compareContexts('garbage!!', ''), (e) => e.code === 'bad_request');
    assert.throws(() => reconcile(['[1]', '{'], 'union'), (e) => e.code === 'bad_request');
    // The connection is still usable.
    await c.put('k', 'still fine');
    assert.deepEqual((await c.get('k')).values, ['still fine']);
  });

  test('a server refusing or dying gives errors, not a hang', async () => {
    const port = await freePort();
    await assert.rejects(KvClient.connect(`ws://127.0.0.1:${port}`, { timeoutMs: 3000 }),
      (e) => e instanceof KvError && e.code === 'unavailable');

    const c = await connect(2, { timeoutMs: 2000, minBackoffMs: 50, maxBackoffMs: 200 });
    await c.put('before-kill', 'x');
    await cluster.kill(2);
    await assert.rejects(c.get('before-kill'), (e) => {
      assert.ok(e instanceof KvError, String(e));
      assert.ok(['unavailable', 'timeout'].includes(e.code), e.code);
      return true;
    });
    // The client reconnects with backoff once the node is back.
    await cluster.restart(2);
    let got;
    for (let i = 0; i < 50 && !got; i++) {
      got = await c.get('before-kill').catch(() => null);
      if (!got) await new Promise((r) => setTimeout(r, 200));
    }
    assert.ok(got, 'no answer after the node came back');
    assert.deepEqual(got.values, ['x']);
    c.close();
    await assert.rejects(c.get('x'), (e) => e.code === 'unavailable');
  });
});
