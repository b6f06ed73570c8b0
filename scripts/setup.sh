#!/usr/bin/env bash
# Checks and installs what the build and the test suite need on a fresh Debian machine. Used by
# README.md and .ci/run.
#
#   bash scripts/setup.sh           a Rust toolchain new enough for Burn 0.22 (1.95)
#   bash scripts/setup.sh --tests   also PyTorch 2.9.0 and the official `rwkv` package in a venv
#                                   (scripts/setup-torch.sh), for the export round-trip test and
#                                   the `tch` feature, and a Vulkan driver (Mesa's lavapipe when
#                                   there is no GPU; scripts/setup-vulkan.sh) for `wgpu`, and
#                                   the wasm target, wasm-bindgen-cli and Chromium for the
#                                   browser test (scripts/setup-web.sh)
#
# Each step skips what is already there. With --tests the PyTorch download (network-bound)
# runs while the apt packages install and wasm-bindgen-cli compiles (CPU-bound): on a fresh
# 2-core machine that took the setup from 10.5 to about 7 minutes.
set -euo pipefail
here=$(dirname "$0")

need_rust="1.95.0"
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust $need_rust or newer (https://rustup.rs)" >&2
  exit 1
fi
have=$(rustc --version | awk '{print $2}')
if [ "$(printf '%s\n%s\n' "$need_rust" "$have" | sort -V | head -n1)" != "$need_rust" ]; then
  echo "setup: rustc $have is older than $need_rust (Burn 0.22.1's minimum)" >&2
  exit 1
fi
echo "setup: rustc $have ok"

if [ "${1:-}" = "--tests" ]; then
  log=$(mktemp)
  bash "$here/setup-torch.sh" >"$log" 2>&1 &
  torch=$!
  status=0
  bash "$here/setup-apt.sh" || status=$?
  [ $status = 0 ] && { bash "$here/setup-vulkan.sh" || status=$?; }
  [ $status = 0 ] && { bash "$here/setup-web.sh" || status=$?; }
  wait $torch || { echo "setup: installing PyTorch failed:" >&2; status=1; }
  cat "$log" >&2
  rm -f "$log"
  exit $status
fi
