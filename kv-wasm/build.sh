#!/usr/bin/env bash
# Builds the SDK packages: pkg/web (ES module for browsers, wasm-bindgen --target web) and
# pkg/node (ES module entry over wasm-bindgen --target nodejs), each with a package.json and
# TypeScript declarations. Idempotent: installs the npm tooling only when node_modules is
# missing or older than package-lock.json, and the wasm-bindgen CLI only when its version
# differs from the wasm-bindgen crate in Cargo.lock (they must match).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$here"

# The CLI must be the exact version of the crate the module was compiled against.
wb_version="$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$root/Cargo.lock")"
if [ -z "$wb_version" ]; then
  echo "build.sh: no wasm-bindgen entry in $root/Cargo.lock" >&2
  exit 1
fi
if [ "$(wasm-bindgen --version 2>/dev/null || true)" != "wasm-bindgen $wb_version" ]; then
  echo "build.sh: installing wasm-bindgen-cli $wb_version (matches Cargo.lock)" >&2
  cargo install wasm-bindgen-cli --version "$wb_version"
fi
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi

# npm tooling (ws for the node tests, binaryen's wasm-opt, typescript for checking the .d.ts).
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
fi

# Size-tuned release build of the wasm module. The overrides are environment variables so
# they apply to this build only and leave the workspace's [profile] alone.
CARGO_PROFILE_RELEASE_OPT_LEVEL=z \
CARGO_PROFILE_RELEASE_LTO=true \
CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
CARGO_PROFILE_RELEASE_DEBUG=0 \
  cargo build --quiet -p kv-wasm --release --target wasm32-unknown-unknown
target_dir="${CARGO_TARGET_DIR:-$root/target}"
wasm="$target_dir/wasm32-unknown-unknown/release/kv_wasm.wasm"

# Skip the packaging when nothing it reads changed since the last build.
inputs="$( (cat "$wasm" js/* test/types.check.ts test/tsconfig.json "$here/build.sh"; wasm-bindgen --version) | sha256sum | cut -d' ' -f1)"
if [ -f pkg/.inputs ] && [ "$(cat pkg/.inputs)" = "$inputs" ] && [ -f pkg/web/index.js ] && [ -f pkg/node/index.mjs ]; then
  cat pkg/.sizes
  exit 0
fi
rm -f pkg/.inputs

version="$(awk -F'"' '/^version = / { print $2; exit }' "$root/Cargo.toml")"

build_pkg() { # $1 = web|node, $2 = wasm-bindgen target
  local out="pkg/$1"
  rm -rf "$out"
  wasm-bindgen --target "$2" --out-dir "$out" "$wasm"
  local bg="$out/kv_wasm_bg.wasm"
  before=$(wc -c < "$bg")
  if [ -x node_modules/.bin/wasm-opt ]; then
    node_modules/.bin/wasm-opt -Oz "$bg" -o "$bg.opt" && mv "$bg.opt" "$bg"
  else
    echo "build.sh: wasm-opt not found, $bg left unoptimized" >&2
  fi
  after=$(wc -c < "$bg")
  echo "kv-wasm: $out/kv_wasm_bg.wasm $before bytes from wasm-bindgen, $after bytes after wasm-opt -Oz" | tee -a pkg/.sizes
}

mkdir -p pkg
: > pkg/.sizes
build_pkg web web
cp js/client.js pkg/web/client.js
cp js/index.web.js pkg/web/index.js
cp js/index.d.ts pkg/web/index.d.ts
cat > pkg/web/package.json <<JSON
{
  "name": "kv-wasm",
  "version": "$version",
  "description": "Browser SDK of the kv store: WebSocket client and sibling reconciliation compiled from kv-core",
  "license": "Apache-2.0",
  "type": "module",
  "main": "./index.js",
  "types": "./index.d.ts",
  "exports": { ".": { "types": "./index.d.ts", "import": "./index.js" } },
  "files": ["index.js", "index.d.ts", "client.js", "kv_wasm.js", "kv_wasm.d.ts", "kv_wasm_bg.wasm", "kv_wasm_bg.wasm.d.ts"],
  "sideEffects": ["./index.js"]
}
JSON

build_pkg node nodejs
cp js/client.js pkg/node/client.mjs
cp js/index.node.mjs pkg/node/index.mjs
cp js/index.d.ts pkg/node/index.d.mts
cat > pkg/node/package.json <<JSON
{
  "name": "kv-wasm",
  "version": "$version",
  "description": "Node.js SDK of the kv store: WebSocket client and sibling reconciliation compiled from kv-core",
  "license": "Apache-2.0",
  "main": "./index.mjs",
  "types": "./index.d.mts",
  "exports": { ".": { "types": "./index.d.mts", "import": "./index.mjs" } },
  "files": ["index.mjs", "index.d.mts", "client.mjs", "kv_wasm.js", "kv_wasm.d.ts", "kv_wasm_bg.wasm", "kv_wasm_bg.wasm.d.ts"],
  "engines": { "node": ">=20" },
  "dependencies": { "ws": "^8.18.0" }
}
JSON

# The declarations must compile, and agree with what a caller writes.
node_modules/.bin/tsc -p test/tsconfig.json
echo "$inputs" > pkg/.inputs
