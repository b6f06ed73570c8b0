#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine. Used by README.md and .ci/run.
# Today that is only a Rust toolchain new enough for Burn 0.22 (1.95); later backends (wgpu on
# Mesa's lavapipe, libtorch) add their packages here.
set -euo pipefail

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
