#!/usr/bin/env bash
# What the browser demo and its test (examples/web) need, all from package registries:
# the wasm32-unknown-unknown Rust target (rustup), wasm-bindgen-cli at exactly the version of
# the wasm-bindgen crate in Cargo.lock (crates.io), and Debian's `chromium` (apt) for the
# headless test. Used by scripts/setup.sh --tests.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  echo "setup-web: adding the wasm32-unknown-unknown target" >&2
  rustup target add wasm32-unknown-unknown >&2
fi

# The CLI must equal the crate: the JS glue format changes between versions.
want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' "$root/Cargo.lock")
have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$want" ]; then
  echo "setup-web: installing wasm-bindgen-cli $want (have: ${have:-none}; ~5 min)" >&2
  cargo install --quiet --force wasm-bindgen-cli --version "=$want" >&2
fi

if ! command -v chromium >/dev/null 2>&1; then
  echo "setup-web: installing chromium (headless browser test)" >&2
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
echo "setup-web: wasm32 target, wasm-bindgen $want, $(chromium --version 2>/dev/null | head -c 40)"
