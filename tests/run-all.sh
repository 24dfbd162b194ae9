#!/usr/bin/env bash
# Runs the whole test suite from a clean checkout. Installs what the tests need when it is
# missing (and skips what is present), builds the binaries the process-level tests drive,
# then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1; }

# The browser SDK compiles kv-core to WebAssembly.
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi
if ! have cargo-nextest; then
  cargo install cargo-nextest --locked
fi

# kv-core must keep building for the browser.
cargo build -p kv-core --target wasm32-unknown-unknown
# The tests in tests/ start real kvd processes and drive kvcli: build them first.
cargo build -p kvd -p kvcli
cargo test --workspace --doc --quiet
cargo nextest run --workspace --no-fail-fast
