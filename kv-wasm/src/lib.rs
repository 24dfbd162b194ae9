//! kv-wasm: the WebAssembly SDK.
