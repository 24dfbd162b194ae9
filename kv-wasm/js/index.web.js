// Entry point of the browser package (ES module): loads the wasm module (top-level await),
// then exports the client and the reconciliation functions.
import init, * as wasm from './kv_wasm.js';
import { createSdk } from './client.js';

await init();

const sdk = createSdk(wasm, async (options) => {
  const WebSocketImpl = options.WebSocket ?? globalThis.WebSocket;
  if (typeof WebSocketImpl !== 'function') {
    throw new sdk.KvError('bad_request', 'no WebSocket in this environment: pass {WebSocket} to KvClient.connect');
  }
  return WebSocketImpl;
});

export const {
  KvClient, KvError, reconcile, compareContexts, mergeContexts, checkContext,
  encodeGet, encodePut, encodeDelete, decodeResponse,
} = sdk;
