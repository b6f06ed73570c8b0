#!/usr/bin/env bash
# Builds the browser demo: the wasm crate for wasm32-unknown-unknown (WebGPU + CPU fallback),
# then wasm-bindgen's JS glue, into $WEB_OUT (default: <target dir>/web/site), next to a copy of
# the page. Needs `bash scripts/setup-web.sh` once (wasm target, wasm-bindgen-cli).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$HOME/.cache/rwkv-burn/target}
# A separate target dir: the wasm build shares nothing with the native one.
wasm_target=${WASM_TARGET_DIR:-$target-wasm}
out=${WEB_OUT:-$target/web/site}

cd "$root"
cargo build --profile web --target wasm32-unknown-unknown --target-dir "$wasm_target" \
  -p rwkv-burn-web --no-default-features
wasm="$wasm_target/wasm32-unknown-unknown/web/rwkv_burn_web.wasm"
mkdir -p "$out/pkg"
# Function names cost ~7 MB; WEB_KEEP_NAMES=1 keeps them for readable stack traces.
names=--remove-name-section
if [ "${WEB_KEEP_NAMES:-0}" = 1 ]; then names=; fi
wasm-bindgen --target web --no-typescript $names --out-dir "$out/pkg" "$wasm"
cp "$here/index.html" "$here/main.js" "$here/worker.js" "$out/"
echo "built $out ($(du -h "$out/pkg/rwkv_burn_web_bg.wasm" | cut -f1) of wasm)" >&2
