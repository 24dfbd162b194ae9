//! kv-wasm: the WebAssembly SDK.
//!
//! Browser and Node.js apps reconcile siblings with the same code the servers run (kv-core),
//! compiled to WebAssembly, and talk to the cluster over WebSocket through a thin JS client
//! (`js/client.js`, packaged by `build.sh` into `pkg/web` and `pkg/node`).
//!
//! Modules:
//! - [`error`]: the one error type, carrying a protocol-style code (`bad_request`, ...).
//! - [`context`]: causal contexts: compare, merge, validate (opaque strings, never built here).
//! - [`reconcile`]: the built-in sibling resolvers `lww`, `union` and `merge`.
//! - [`protocol`]: request frames and decoded answers of the wire protocol.
//! - [`bindings`]: the `#[wasm_bindgen]` exports, thin wrappers that convert JS values and
//!   call the plain functions above (which is what keeps the logic testable on the host).
#![deny(clippy::unwrap_used)]

pub mod bindings;
pub mod context;
pub mod error;
pub mod protocol;
pub mod reconcile;

pub use error::{Result, SdkError};
