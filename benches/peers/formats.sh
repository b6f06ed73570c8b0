#!/usr/bin/env bash
# Decode and prefill of every weight format, side by side with rwkv.cpp and llama.cpp on the
# very same weights (README, "Weight formats"). Alternating: each repetition runs every engine
# and format once, for each preset and thread count, so that the machine's drift lands on all
# of them alike. One JSON line per run on stdout; `formats_table.py` turns them into the table.
#
#   bash benches/peers/formats.sh RWKV_BIN > results.jsonl
#
# Inputs (environment, defaults in brackets):
#   MODELS [../models]      P.pth for each preset (`rwkv bench --preset P --save-model P.pth`),
#                           rwkv.cpp's P-{FP32,FP16,Q8_0,Q4_0}.bin (for 7-0.1b from a copy
#                           without layer 0's v0/v1/v2, which its loader cannot place) and
#                           llama.cpp's gguf/7-0.1b-{f32,f16,q8_0,q4_0}.gguf
#                           (../shared/notes/peers.md has the conversion commands)
#   RWKV_CPP_DIR [../peers/rwkv.cpp]   built rwkv.cpp; skipped when absent
#   LLAMA_BENCH  [../peers/llama.cpp/build/bin/llama-bench]   skipped when absent
#   PY [python3]            a Python with numpy for benches/peers/rwkv_cpp.py
#   PRESETS [4-169m 7-0.1b]  THREADS [1 2]  REPS [3]  PREFILL [512]  DECODE [128]
#   FORMATS [f32 bf16 f16 q8 q4]  RWKV_CPP_FORMATS [FP32 FP16 Q8_0 Q4_0]
#   LLAMA_FORMATS [f32 f16 q8_0 q4_0]
set -uo pipefail
rwkv=${1:?usage: formats.sh RWKV_BIN}
here=$(cd "$(dirname "$0")" && pwd)
models=${MODELS:-../models}
rwkv_cpp=${RWKV_CPP_DIR:-../peers/rwkv.cpp}
llama_bench=${LLAMA_BENCH:-../peers/llama.cpp/build/bin/llama-bench}
py=${PY:-python3}
prefill=${PREFILL:-512}
decode=${DECODE:-128}

# One measurement as a JSON line: the engine's own JSON object with what was run added.
record() {
  local engine=$1 format=$2 preset=$3 threads=$4 rep=$5
  shift 5
  local out
  out=$("$@" 2>/dev/null)
  local status=$?
  [ $status = 0 ] || out='{"error": "exit status '$status'"}'
  # llama-bench prints one line per test (pp, tg): merged into one object.
  printf '%s\n' "$out" | "$py" -c '
import json, sys
engine, fmt, preset, threads, rep = sys.argv[1:6]
lines = [json.loads(l) for l in sys.stdin if l.strip()]
merged = {}
for line in lines:
    if "n_prompt" in line:
        key = "prefill_tokens_per_s" if line["n_prompt"] > 0 else "decode_tokens_per_s"
        merged[key] = line["avg_ts"]
    else:
        merged.update(line)
merged.update(engine=engine, format=fmt, preset=preset, threads=int(threads), rep=int(rep))
print(json.dumps(merged))
' "$engine" "$format" "$preset" "$threads" "$rep"
}

for rep in $(seq 1 "${REPS:-3}"); do
  for threads in ${THREADS:-1 2}; do
    for preset in ${PRESETS:-4-169m 7-0.1b}; do
      for format in ${FORMATS:-f32 bf16 f16 q8 q4}; do
        record rwkv-burn "$format" "$preset" "$threads" "$rep" \
          "$rwkv" bench --model "$models/$preset.pth" --weights "$format" --threads "$threads" \
          --prefill "$prefill" --decode "$decode" --batch 1 --json
      done
      base=$preset
      [ "$preset" = 7-0.1b ] && base=7-0.1b-nov0
      if [ -f "$rwkv_cpp/build/librwkv.so" ]; then
        for format in ${RWKV_CPP_FORMATS:-FP32 FP16 Q8_0 Q4_0}; do
          [ -f "$models/$base-$format.bin" ] || continue
          record rwkv.cpp "$format" "$preset" "$threads" "$rep" \
            "$py" "$here/rwkv_cpp.py" "$rwkv_cpp" "$models/$base-$format.bin" \
            --threads "$threads" --prefill "$prefill" --decode "$decode"
        done
      fi
      if [ -x "$llama_bench" ] && [ "$preset" = 7-0.1b ]; then
        for format in ${LLAMA_FORMATS:-f32 f16 q8_0 q4_0}; do
          [ -f "$models/gguf/$preset-$format.gguf" ] || continue
          record llama.cpp "$format" "$preset" "$threads" "$rep" \
            "$llama_bench" -m "$models/gguf/$preset-$format.gguf" -t "$threads" \
            -p "$prefill" -n "$decode" -r 1 -o jsonl
        done
      fi
    done
  done
done
