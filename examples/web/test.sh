#!/usr/bin/env bash
# The browser test: builds the page, serves it on 127.0.0.1 and drives headless Chromium over
# the DevTools protocol (drive.py).
#  1. WebGPU (SwiftShader here): every fixture model's logits (full, step, chunked) against the
#     official package's within 1e-4 + 1e-4·|expected|, then a generation with the embedded
#     model that must produce text. Fails if the page is not on WebGPU.
#  2. The CPU fallback: Chromium with WebGPU switched off and `navigator.gpu` removed, as in a
#     browser without WebGPU; the page must pick the CPU and pass the same checks.
# Exit status 0 only when both held. The screenshot after generation is kept at
# <target dir>/web/screenshot.png (and screenshot-cpu.png).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$HOME/.cache/rwkv-burn/target}
site=$target/web/site
fixtures=${RWKV_FIXTURES:-$root/../shared/fixtures}
[ -d "$fixtures" ] || { echo "test.sh: no fixtures at $fixtures (set RWKV_FIXTURES)" >&2; exit 1; }

# WEB_BUILT=1: the page was built already (scripts/test.sh builds it beside the native tests).
if [ "${WEB_BUILT:-0}" = 1 ]; then
  [ -f "$site/pkg/rwkv_burn_web_bg.wasm" ] || { echo "test.sh: WEB_BUILT=1 but no page at $site" >&2; exit 1; }
else
  WEB_OUT=$site bash "$here/build.sh"
fi
ln -sfn "$(cd "$fixtures" && pwd)" "$site/fixtures"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$site" >"$target/web/http.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/index.html')" 2>/dev/null && break
  sleep 0.1
done

# page NAME DRIVE-ARGS...: one run of drive.py; the result JSON in <target>/web/NAME.json, and
# how long it took on stderr. (Measured in a `.ci/run` of 2026-12-03: WebGPU 311 s with warm
# caches, about 380 s cold; the CPU page 4 s, so the two run one after the other.) On
# SwiftShader the page decodes about 1 token/s, so its two generations (cold, then warm) make
# 16 tokens, not the page's 64: that alone was about 2 of those minutes.
page() {
  local name=$1 start=$SECONDS rc=0
  shift
  python3 "$here/drive.py" "$@" >"$target/web/$name.json" || rc=$?
  echo "($name page: $((SECONDS - start)) s)" >&2
  cat "$target/web/$name.json"
  return $rc
}

status=0
echo "== WebGPU (SwiftShader) ==" >&2
if page webgpu "http://127.0.0.1:$port/index.html?backend=webgpu" \
    'window.rwkvTest.run(undefined, 16).then(r => ({...r, ok: r.ok && r.backend === "webgpu"}))' \
    --screenshot "$target/web/screenshot.png" --timeout 900 \
    --chromium-arg=--enable-unsafe-webgpu --chromium-arg=--use-webgpu-adapter=swiftshader; then
  echo "ok: WebGPU" >&2
else
  echo "FAILED: WebGPU" >&2
  status=1
fi

echo "== CPU fallback (no WebGPU: switched off, and navigator.gpu removed) ==" >&2
if page cpu "http://127.0.0.1:$port/index.html" \
    'window.rwkvTest.run().then(r => ({...r, ok: r.ok && r.backend === "cpu"}))' \
    --screenshot "$target/web/screenshot-cpu.png" --timeout 900 \
    --chromium-arg=--disable-features=WebGPU \
    --init-script 'Object.defineProperty(Navigator.prototype, "gpu", { get: () => undefined });'; then
  echo "ok: CPU fallback" >&2
else
  echo "FAILED: CPU fallback" >&2
  status=1
fi
exit $status
