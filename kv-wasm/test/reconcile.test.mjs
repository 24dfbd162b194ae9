// The exported reconciliation and context functions of the Node.js package, without a cluster.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  KvError, checkContext, compareContexts, decodeResponse, encodeDelete, encodeGet, encodePut,
  mergeContexts, reconcile,
} from '../pkg/node/index.mjs';

test('union treats JSON arrays as sets', () => {
  assert.equal(reconcile(['["a","b"]', '["b","c"]'], 'union'), '["a","b","c"]');
  assert.equal(reconcile([], 'union'), '[]');
});

test('merge deep-merges objects, newer scalars winning', () => {
  const siblings = [
    { value: '{"cart":{"apple":3},"owner":"bob"}', timestampMs: 20 },
    { value: '{"cart":{"pear":1,"apple":1},"owner":"ann"}', timestampMs: 10 },
  ];
  assert.deepEqual(JSON.parse(reconcile(siblings, 'merge')), { cart: { apple: 3, pear: 1 }, owner: 'bob' });
});

test('lww returns the newest value unchanged and needs timestamps', () => {
  const bytes = new Uint8Array([1, 2, 3]);
  assert.equal(reconcile([{ value: 'old', timestampMs: 1 }, { value: bytes, timestampMs: 2 }], 'lww'), bytes);
  assert.equal(reconcile({ siblings: [] }, 'lww'), null);
  assert.throws(() => reconcile(['a', 'b'], 'lww'), (e) => e instanceof KvError && /timestamps/.test(e.message));
});

test('a function resolver gets the values; its errors pass through', () => {
  assert.equal(reconcile(['a', 'bb'], (vs) => vs.join('+')), 'a+bb');
  assert.throws(() => reconcile(['a'], () => { throw new RangeError('mine'); }), RangeError);
  assert.throws(() => reconcile(['a'], 'newest'), (e) => e.code === 'bad_request');
  assert.throws(() => reconcile('a', 'lww'), (e) => e.code === 'bad_request');
});

test('contexts compare, merge and validate', () => {
  // Contexts come from the server; these two are what kv-core encodes for {n1:1} and {n1:2,n2:1}.
  const old = 'AQECbjEB';
  const newer = 'AQICbjECAm4yAQ';
  assert.equal(compareContexts(old, newer), 'before');
  assert.equal(compareContexts(newer, old), 'after');
  assert.equal(compareContexts(old, old), 'equal');
  assert.equal(compareContexts('', old), 'before');
  assert.equal(mergeContexts([old, newer]), newer);
  assert.equal(mergeContexts([]), '');
  checkContext(newer);
  assert.throws(() => checkContext('AQ'), (e) => e.code === 'bad_request');
  assert.throws(() => mergeContexts([old, 7]), (e) => e.code === 'bad_request');
});

test('wire frames encode and decode', () => {
  assert.deepEqual(JSON.parse(encodeGet(1, 'k', 2)), { id: 1, op: 'get', key: 'k', r: 2 });
  assert.deepEqual(JSON.parse(encodePut(2, 'k', new Uint8Array([0xff]))), { id: 2, op: 'put', key: 'k', value_b64: '/w==' });
  assert.deepEqual(JSON.parse(encodeDelete(3, 'k', 'AQECbjEB', 1)), { id: 3, op: 'delete', key: 'k', context: 'AQECbjEB', w: 1 });
  assert.throws(() => encodePut(4, 'k', 42), (e) => e.code === 'bad_request');
  assert.throws(() => encodeGet(0.5, 'k'), (e) => e.code === 'bad_request');

  const get = decodeResponse('{"id":5,"ok":true,"key":"k","found":true,"values":["a",{"value_b64":"/w=="}],' +
    '"siblings":[{"value":"a","timestamp_ms":1},{"value":{"value_b64":"/w=="},"timestamp_ms":2}],"context":"AQECbjEB"}');
  assert.equal(get.id, 5);
  assert.equal(get.key, 'k');
  assert.equal(get.values[0], 'a');
  assert.deepEqual([...get.values[1]], [0xff]);
  assert.equal(get.siblings[1].timestampMs, 2);
  const err = decodeResponse('{"id":6,"ok":false,"error":{"code":"unavailable","message":"n2 down"}}');
  assert.deepEqual(err, { id: 6, ok: false, error: { code: 'unavailable', message: 'n2 down' } });
  assert.throws(() => decodeResponse('nope'), (e) => e.code === 'bad_response');
});
