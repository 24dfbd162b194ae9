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
# The fault-injection tests (tests/tests/fault_injection.rs) put each node in a network
# namespace (ip), partition them with iptables and slow links with tc.
if ! have iptables; then
  apt-get update && apt-get install -y iptables
fi
if ! have ip || ! have tc; then
  apt-get update && apt-get install -y iproute2
fi
# The TLS tests (tests/tests/tls.rs) make their CA and node certificates with openssl.
if ! have openssl; then
  apt-get update && apt-get install -y openssl
fi

# kv-core must keep building for the browser.
cargo build -p kv-core --target wasm32-unknown-unknown
# The tests in tests/ start real kvd processes and drive kvcli: build them first.
cargo build -p kvd -p kvcli
cargo test --workspace --doc --quiet
cargo nextest run --workspace --no-fail-fast

# --- kv-wasm: SDK build and node tests ---
# The wasm-bindgen CLI must be the exact version of the wasm-bindgen crate in Cargo.lock.
wb_version="$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)"
if [ "$(wasm-bindgen --version 2>/dev/null || true)" != "wasm-bindgen $wb_version" ]; then
  cargo install wasm-bindgen-cli --version "$wb_version"
fi
if ! have node || ! have npm; then
  apt-get update && apt-get install -y nodejs npm
fi
# The browser test drives the web package in headless Chromium (Debian's, about 30 s to install).
if ! have chromium; then
  apt-get update && apt-get install -y chromium
fi
# Builds pkg/web and pkg/node (npm ci only when kv-wasm/node_modules is missing or stale).
kv-wasm/build.sh
# Node tests of pkg/node and pkg/web (the latter also in Chromium) against real kvd clusters
# (the debug kvd built above).
node --test kv-wasm/test/*.test.mjs

# --- www: the web console in headless Chromium against a real 3-node cluster ---
# Needs Debian's chromium (/usr/bin/chromium) and playwright-core (npm, in www/node_modules);
# installs them when missing. The screenshot lands in test-artifacts/console.png.
if [ ! -x /usr/bin/chromium ]; then
  apt-get update && apt-get install -y chromium
fi
if [ ! -d www/node_modules/playwright-core ]; then
  (cd www && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
fi
node --test www/test/*.test.mjs

# --- benchmarks: every script of kvd/bench with tiny settings, so they keep working ---
# They compare against Redis (redis-server, redis-benchmark) and RocksDB (db_bench), and count
# instructions and allocations under valgrind.
if ! have redis-server || ! have redis-benchmark; then
  apt-get update && apt-get install -y redis-server redis-tools
fi
if ! have db_bench; then
  apt-get update && apt-get install -y rocksdb-tools
fi
if ! have valgrind; then
  apt-get update && apt-get install -y valgrind
fi
kvd/bench/smoke.sh
