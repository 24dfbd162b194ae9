// Arguments of the wrong type are refused with `bad_request` before they reach the wasm
// module (where a number for a string trapped: "memory access out of bounds"), and nothing is
// sent for them.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import {
  KvClient, KvError, checkContext, compareContexts, decodeResponse, encodeDelete, encodeGet,
  encodePut, mergeContexts,
} from '../pkg/node/index.mjs';
import { fakeNode } from './fake_node.mjs';

/** Asserts a KvError `bad_request` whose message matches `pattern`. */
const badRequest = (pattern) => (e) => {
  assert.ok(e instanceof KvError, `${e && e.name}: ${e && e.message}`);
  assert.equal(e.code, 'bad_request', e.message);
  assert.match(e.message, pattern);
  return true;
};

let node;
let client;
before(async () => {
  node = await fakeNode((req) => JSON.stringify({ id: req.id, ok: true, key: req.key, context: '' }));
  client = await KvClient.connect(node.url, { timeoutMs: 3000 });
});
after(async () => {
  client?.close();
  await node?.close();
});

test('client calls check the types of keys, values, contexts and quorums', async () => {
  const c = client;
  const cases = [
    [() => c.get(123), /key must be a string, not number 123/],
    [() => c.get(undefined), /key must be a string/],
    [() => c.put(123, 'v'), /key must be a string/],
    [() => c.put('k', 42), /value must be a string or a Uint8Array, not number 42/],
    [() => c.put('k', [1, 2]), /value must be a string or a Uint8Array, not an array/],
    [() => c.put('k', 'v', { context: { some: 'object' } }), /context must be the string an earlier read returned, not an object/],
    [() => c.put('k', 'v', { context: 5 }), /context must be/],
    [() => c.delete('k', { context: {} }), /context must be/],
    [() => c.delete(7), /key must be a string/],
    [() => c.incr(7), /key must be a string/],
    [() => c.incr('n', 'two'), /by must be a number, not the string "two"/],
    [() => c.put('k', 'v', { ttlSeconds: '5' }), /ttlSeconds must be a number/],
  ];
  for (const [w, shown] of [[1.5, 'number 1.5'], [-1, 'number -1'], [0, 'number 0'], ['two', 'the string "two"']]) {
    const said = new RegExp(`must be a whole number, at least 1, not ${shown}`);
    cases.push([() => c.put('k', 'v', { w }), said]);
    cases.push([() => c.delete('k', { w }), said]);
    cases.push([() => c.incr('n', 1, { w }), said]);
    cases.push([() => c.get('k', { r: w }), said]);
  }
  for (const [call, pattern] of cases) {
    await assert.rejects(call(), badRequest(pattern), call.toString());
  }
  assert.equal(node.requests.length, 0, 'nothing was sent');
  // The module is intact and the connection serves good requests.
  assert.equal((await c.put('k', 'v', { w: 2, context: '' })).key, 'k');
  assert.equal((await c.put('k', new Uint8Array([1]), { ttlSeconds: 5 })).key, 'k');
  assert.equal(node.requests.length, 2);
});

test('the functions check their argument types', () => {
  const cases = [
    [() => compareContexts(1, ''), /causal context must be a string, not number 1/],
    [() => compareContexts({}, ''), /causal context must be a string, not an object/],
    [() => compareContexts('', null), /causal context must be a string, not null/],
    [() => checkContext(5), /causal context must be a string/],
    [() => mergeContexts('AQ'), /takes an array of contexts/],
    [() => mergeContexts([1]), /not a string/],
    [() => decodeResponse(5), /answer frame must be a string/],
    [() => encodeGet(1, 5), /key must be a string/],
    [() => encodeGet('1', 'k'), /request id must be a number/],
    [() => encodePut(1, 'k', 5), /value must be a string or a Uint8Array/],
    [() => encodePut(1, 'k', 'v', 5), /context must be/],
    [() => encodeDelete(1, 'k', null, 2.5), /w must be a whole number/],
  ];
  for (const [call, pattern] of cases) assert.throws(call, badRequest(pattern), call.toString());
  assert.equal(compareContexts('', ''), 'equal');
});

test('connect refuses what is not a URL with bad_request, token or not', async () => {
  for (const options of [{}, { token: 'sesame-123' }]) {
    await assert.rejects(KvClient.connect('not a url', options), (e) => {
      badRequest(/"not a url" is not a URL/)(e);
      assert.doesNotMatch(e.message, /sesame-123/);
      return true;
    });
  }
  await assert.rejects(KvClient.connect(42), badRequest(/URL must be a string/));
  await assert.rejects(KvClient.connect(node.url, { token: 7 }), badRequest(/token must be a string/));
});
