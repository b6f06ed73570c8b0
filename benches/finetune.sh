#!/usr/bin/env bash
# Peak memory and training speed of full fine-tuning, LoRA and state tuning, each with and
# without --grad-cp, on a random model of the 7-0.1b shape (12 x 768, World vocabulary) at
# ctx 512 (CTX overrides), one sequence a step, on every device given (DEVICES, default
# flex). Peak memory is the process's maximum resident set (GNU time's %M): the model, the
# optimizer state, the activations the backward keeps, and the allocator's slack.
#
#   cargo build --release -p rwkv-burn-infer -p rwkv-burn-train   # --features rwkv-burn/tch for tch
#   DEVICES=flex,libtorch bash benches/finetune.sh
#   CTX=2048 STEPS=2 RUNS="full;full --grad-cp" bash benches/finetune.sh
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${CARGO_TARGET_DIR:-target}/release"
rwkv="${RWKV_BIN:-$dir/rwkv}"
train="${RWKV_TRAIN_BIN:-$dir/rwkv-train}"
ctx="${CTX:-512}"
steps="${STEPS:-4}"
devices="${DEVICES:-flex}"
preset="${PRESET:-7-0.1b}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$rwkv" bench --preset "$preset" --save-model "$tmp/model.safetensors" \
  --prefill 1 --decode 1 --batch 1 >/dev/null
# Text for the World tokenizer: the project's corpus.
cp rwkv-burn-train/assets/corpus/kjv-genesis-exodus.txt "$tmp/text.txt"

printf '| device | mode | flags | peak memory (MiB) | tokens/s | vs full |\n|---|---|---|---|---|---|\n'
# mode and extra flags of each run; LoRA and state tuning also with their frozen base in bf16.
runs=("full" "full --grad-cp" "lora" "lora --grad-cp" "lora --precision bf16"
  "state" "state --grad-cp" "state --precision bf16")
[ -n "${RUNS:-}" ] && IFS=';' read -ra runs <<<"$RUNS"
IFS=, read -ra list <<<"$devices"
for device in "${list[@]}"; do
  full_mem=
  for spec in "${runs[@]}"; do
    read -r mode flags <<<"$spec"
    out="$tmp/run-$device-${spec// /}"
    # shellcheck disable=SC2086 # flags are words
    /usr/bin/time -f %M -o "$tmp/mem" "$train" train --init-from "$tmp/model.safetensors" \
      --vocab world --data "$tmp/text.txt" --out "$out" --tune "$mode" $flags \
      --ctx "$ctx" --batch 1 --steps "$steps" --warmup 0 --eval-every 1000000 \
      --valid-fraction 0.01 --lr 1e-4 --device "$device" 2>"$tmp/log" ||
      { cat "$tmp/log" >&2; exit 1; }
    mem=$(( $(cat "$tmp/mem") / 1024 ))
    # The running rate at the step before the last (the last one also validates).
    rate=$(sed -n "${steps}p" "$out/metrics.csv" | cut -d, -f5)
    [ "$spec" = full ] && full_mem=$mem
    ratio=$(awk -v a="$mem" -v b="$full_mem" 'BEGIN { printf "%.0f%%", 100 * a / b }')
    printf '| %s | %s | %s | %s | %s | %s |\n' "$device" "$mode" "$flags" "$mem" "$rate" "$ratio"
  done
done
