#!/usr/bin/env bash
# `rwkv serve` under load (benches/serve.py): tokens/s and time to first token at 1, 4, 16 and
# 64 concurrent streams, and a long conversation's next turn with and without its cached
# prefix state, on the embedded model and on a random model of the 7-0.1b shape (World
# vocabulary).
#
#   cargo build --release -p rwkv-burn-infer
#   bash benches/serve.sh               # RWKV_BIN, PYTHON, STREAMS override the defaults
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${RWKV_BIN:-${CARGO_TARGET_DIR:-target}/release/rwkv}"
python="${PYTHON:-$HOME/.cache/rwkv-burn/torch-venv/bin/python}"
streams="${STREAMS:-1,4,16,64}"
tmp=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; rm -rf "$tmp"' EXIT

"$bin" bench --preset 7-0.1b --save-model "$tmp/7-0.1b.safetensors" \
  --prefill 1 --decode 1 --batch 1 >/dev/null

# run LABEL SERVE-ARGS... -- BENCH-ARGS...
run() {
  local label=$1
  shift
  local serve_args=()
  while [ "$1" != -- ]; do serve_args+=("$1"); shift; done
  shift
  "$bin" serve --port 0 --max-batch 64 "${serve_args[@]}" 2>"$tmp/log" &
  pid=$!
  local url=
  for _ in $(seq 600); do
    url=$(grep -o 'http://[0-9.:]*' "$tmp/log" | head -n1 || true)
    [ -n "$url" ] && break
    sleep 0.1
  done
  [ -n "$url" ] || { cat "$tmp/log" >&2; exit 1; }
  "$python" benches/serve.py --url "$url" --label "$label" --streams "$streams" "$@"
  kill -TERM $pid
  wait $pid
  pid=
}

run embedded -- --prompt-words 12 --conversation-words 350
run 7-0.1b --model "$tmp/7-0.1b.safetensors" -- --conversation-words 1500
