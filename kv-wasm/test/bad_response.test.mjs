// A server answering a frame the SDK cannot decode: the request it names fails at once with
// `bad_response` instead of waiting for its timeout, and the connection goes on.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import { KvClient, KvError } from '../pkg/node/index.mjs';
import { fakeNode } from './fake_node.mjs';

/** What the fake node answers, by the requested key (`id` is the request's). */
const answers = {
  'values-not-an-array': (id) => `{"id":${id},"ok":true,"values":5}`,
  'ok-not-a-boolean': (id) => `{"id":${id},"ok":"yes"}`,
  'sibling-without-value': (id) => `{"id":${id},"ok":true,"siblings":[{"timestamp_ms":1}]}`,
  'error-without-code': (id) => `{"id":${id},"ok":false,"error":{}}`,
  'no-id': () => '{"ok":true,"values":5}',
  good: (id) => `{"id":${id},"ok":true,"key":"good","found":true,"values":["v"],"context":""}`,
};

let node;
let client;
before(async () => {
  node = await fakeNode((req) => answers[req.key](req.id));
  client = await KvClient.connect(node.url, { timeoutMs: 4000 });
});
after(async () => {
  client?.close();
  await node?.close();
});

test('a malformed answer with a readable id fails its request with bad_response', async () => {
  for (const key of ['values-not-an-array', 'ok-not-a-boolean', 'sibling-without-value', 'error-without-code']) {
    const started = Date.now();
    await assert.rejects(client.get(key), (e) => {
      assert.ok(e instanceof KvError, String(e));
      assert.equal(e.code, 'bad_response', `${key}: ${e.code}: ${e.message}`);
      assert.match(e.message, /does not decode/);
      return true;
    });
    assert.ok(Date.now() - started < 2000, `${key} waited ${Date.now() - started} ms`);
  }
  // The connection still serves requests.
  assert.deepEqual((await client.get('good')).values, ['v']);
});

test('a malformed answer without an id leaves its request to time out', async () => {
  const c = await KvClient.connect(node.url, { timeoutMs: 300 });
  try {
    await assert.rejects(c.get('no-id'), (e) => e instanceof KvError && e.code === 'timeout');
    assert.deepEqual((await c.get('good')).values, ['v']);
  } finally {
    c.close();
  }
});
