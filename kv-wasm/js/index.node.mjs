// Entry point of the Node.js package (ES module): the wasm module is loaded synchronously by
// the CommonJS glue wasm-bindgen writes; WebSocket is Node's global one where present
// (Node 22+), else the `ws` package.
import wasm from './kv_wasm.js';
import { createSdk } from './client.mjs';

const sdk = createSdk(wasm, async (options) => {
  if (options.WebSocket) return options.WebSocket;
  if (typeof globalThis.WebSocket === 'function') return globalThis.WebSocket;
  try {
    return (await import('ws')).default;
  } catch (e) {
    throw new sdk.KvError('internal', `this Node.js has no global WebSocket and the ws package is not installed: ${e.message}`);
  }
});

export const {
  KvClient, KvError, reconcile, compareContexts, mergeContexts, checkContext,
  encodeGet, encodePut, encodeDelete, decodeResponse,
} = sdk;
