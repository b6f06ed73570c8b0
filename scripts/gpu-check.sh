#!/usr/bin/env bash
# The GPU check: everything our GPU code must show on an NVIDIA machine, prepared here and run
# there in one command (issue 22). The GPU machines lent to this project have 16 cores, PyTorch
# 2.11 (CUDA 13) as their only libtorch, NVIDIA's Vulkan driver without the loader library, no
# network and no Rust, and take a working tree of at most 64 MiB: so the binaries are built
# here against a PyTorch 2.11 wheel, stripped and packed, and `run` only unpacks and runs them.
#
#   bash scripts/gpu-check.sh prepare   here: builds with `tch` (PyTorch 2.11) and `vulkan`,
#                                       packs binaries, fixtures and the Vulkan loader into .gpu/
#   bash scripts/gpu-check.sh run       there, from the repository root with .gpu/ carried:
#                                       writes gpu-check.log and gpu-check.json to $OUT
#                                       (.gpu/out without it); exit 0 only if every step passed
#   bash scripts/gpu-check.sh dry-run   here and in CI: `run`'s steps on the CPU (flex) with
#                                       tiny sizes and the test build's binaries, then checks
#                                       the JSON, so that the script cannot rot between loans
#
# `run` on the device tool, with the carried folder:
#   run(command="bash scripts/gpu-check.sh run", carry=[".gpu"], timeout_s=540)
#
# What `run` does, each step under its own time limit and all of them under one deadline
# (GPU_CHECK_DEADLINE seconds, 470 by default; a step that would start later is recorded as
# skipped, a step is cut at it), so that the JSON is written even when a step hangs. In this
# order, correctness first:
#   parity     every fixture version in full/step/chunked mode (the rwkv-burn suite's fixture
#              and modes tests), one step per GPU device, the worst error of each check logged
#   grads      the gradient and loss fixtures (RWKV-4 through transformers, RWKV-7) on the GPU
#              devices
#   backward   the WKV kernels' backward against autodiff of the reference body
#   bench      `rwkv bench` prefill 512, decode 64, batch 4 of the 7-1.5b preset on
#              libtorch-cuda and vulkan (with GPU dispatches per decode step on vulkan)
#   train      training tokens/s of the 7-0.1b preset at ctx 512 and 4096 on libtorch-cuda
#   wkv        WKV kernels against the reference body on the same device (criterion), T = 512, 4096
#   cpu        decode on flex at 1, 2, 4, 8 and 16 threads
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
pack="$root/.gpu"
# The libtorch of the GPU machines (PyTorch 2.11, CUDA 13).
gpu_torch=2.11.0
# ndarray too, so that the same build runs the whole CPU suite against PyTorch 2.11 here.
gpu_features=rwkv-burn/ndarray,rwkv-burn/tch,rwkv-burn/vulkan
# The fixtures the steps read (not the tokenizer or GGUF ones: 64 MiB is tight).
fixture_dirs="rwkv4 rwkv5 rwkv6 rwkv7 hf_rwkv4 rwkv7_train"
# Debian packages of the Vulkan loader and glvnd (NVIDIA's driver brings the ICD, not the
# loader; its ICD, libGLX_nvidia, needs glvnd's libGLdispatch). Measured on the H200 on
# 2026-12-04: with libvulkan1 alone every Vulkan and wgpu device found "no adapter".
vulkan_debs="libvulkan1 libglvnd0 libglx0 libegl1 libgl1 libopengl0 libgles2"
limit_bytes=$((64 << 20))

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}

# The test executables of `cargo test --no-run` (JSON messages on stdin), put in $1 as suite
# (rwkv-burn's fixture suite), lib (rwkv-burn's unit tests), train-suite and wkv-bench: copied,
# or hard-linked with $2 = link (not for stripping: that would strip the build's own files).
pick_executables() {
  local dest=$1 how=${2:-copy}
  python3 -c '
import json, shutil, sys, os
dest = sys.argv[1]
want = {
    ("rwkv-burn", "suite", "test"): "suite",
    ("rwkv-burn", "rwkv_burn", "lib"): "lib",
    ("rwkv-burn-train", "suite", "test"): "train-suite",
    ("rwkv-burn-benches", "wkv", "bench"): "wkv-bench",
}
found = {}
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    # "path+file:///src/rwkv-burn#0.1.0", or "...#name@0.1.0" where the folder is named otherwise.
    url, _, frag = m["package_id"].partition("#")
    pkg = frag.split("@")[0] if "@" in frag else url.rsplit("/", 1)[-1]
    key = (pkg, m["target"]["name"], m["target"]["kind"][0])
    if key in want:
        found[want[key]] = m["executable"]
for name, exe in found.items():
    if sys.argv[2] == "link":
        os.link(exe, os.path.join(dest, name))
    else:
        shutil.copy2(exe, os.path.join(dest, name))
missing = sorted(set(want.values()) - set(found))
if missing:
    sys.exit("gpu-check: the build produced no " + ", ".join(missing))
' "$dest" "$how"
}

prepare() {
  export RWKV_TORCH=$gpu_torch
  bash scripts/setup-torch.sh
  # shellcheck source=test-env.sh
  . scripts/test-env.sh
  command -v apt-get >/dev/null || { echo "gpu-check: apt-get is needed to fetch $vulkan_debs" >&2; exit 1; }

  rm -rf "$pack.new"
  mkdir -p "$pack.new/bin" "$pack.new/debs"
  echo "gpu-check: building with $gpu_features against PyTorch $gpu_torch in $CARGO_TARGET_DIR" >&2
  # One feature set for the tests, the bench and the CLIs: each further set rebuilds Burn.
  { cargo test --release --workspace --features "$gpu_features" --no-run --message-format=json
    cargo test --release --workspace --features "$gpu_features" --bench wkv --no-run --message-format=json
  } | pick_executables "$pack.new/bin"
  cp "$CARGO_TARGET_DIR/release/rwkv" "$CARGO_TARGET_DIR/release/rwkv-train" "$pack.new/bin/"
  strip "$pack.new/bin/"*
  ls -l "$pack.new/bin" >&2

  (cd "$pack.new/debs" && apt-get download $vulkan_debs >&2)
  local fixtures="${RWKV_FIXTURES:-$root/../shared/fixtures}"
  mkdir -p "$pack.new/stage/fixtures"
  cp "$fixtures/README.md" "$pack.new/stage/fixtures/"
  for d in $fixture_dirs; do cp -r "$fixtures/$d" "$pack.new/stage/fixtures/"; done
  mv "$pack.new/bin" "$pack.new/stage/bin"
  # One xz stream over all binaries: they share most of their code (Burn, CubeCL, wgpu), and a
  # dictionary larger than the tar finds it again across files. Measured on 2026-12-03 here:
  # see the closing note of issue 22 for sizes and time.
  echo "gpu-check: compressing (a few minutes)" >&2
  tar -C "$pack.new/stage" -cf - bin fixtures |
    xz -9e --lzma2=preset=9e,dict=1536MiB -T1 >"$pack.new/pack.tar.xz"
  rm -rf "$pack.new/stage"
  rm -rf "$pack"
  mv "$pack.new" "$pack"

  local tree packed
  tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null |
    awk '{s += $1} END {print s + 0}')
  packed=$(du -sb "$pack" | cut -f1)
  echo "gpu-check: .gpu is $packed bytes, the tree $tree bytes; together $((tree + packed)) of $limit_bytes" >&2
  if [ $((tree + packed)) -gt $limit_bytes ]; then
    echo "gpu-check: over the 64 MiB the device tool carries" >&2
    exit 1
  fi
}

# Runs the steps. GPU_CHECK_BIN: folder of the executables; the sizes below are the GPU run's
# unless the caller (dry-run) set them.
run_steps() {
  local out=$1 bin=$2 fixtures=$3
  local parity_devices=${GPU_CHECK_DEVICES:-libtorch-cuda,vulkan,wgpu}
  local kernel_devices=${GPU_CHECK_KERNEL_DEVICES:-libtorch-cuda,vulkan}
  local bench_devices=${GPU_CHECK_BENCH_DEVICES:-libtorch-cuda vulkan}
  # Sizes that fit the loan (2026-12-04 on the H200: 7-1.5b prefill 2048 / decode 256 / batch
  # 4 took 36 s on libtorch-cuda, 7-2.9b ran past 60 s, and the first Vulkan steps compile).
  local presets=${GPU_CHECK_PRESETS:-7-1.5b}
  local prefill=${GPU_CHECK_PREFILL:-512} decode=${GPU_CHECK_DECODE:-64}
  local wkv_lengths=${GPU_CHECK_WKV_LENGTHS:-512,4096}
  local train_device=${GPU_CHECK_TRAIN_DEVICE:-libtorch-cuda}
  local train_ctx=${GPU_CHECK_TRAIN_CTX:-512 4096} train_steps=${GPU_CHECK_TRAIN_STEPS:-6}
  local train_tokens=${GPU_CHECK_TRAIN_TOKENS:-4096}
  local train_model=${GPU_CHECK_TRAIN_MODEL:---preset 7-0.1b}
  local corpus_bytes=${GPU_CHECK_CORPUS_BYTES:-100000000}
  local threads=${GPU_CHECK_THREADS:-1 2 4 8 16} cpu_decode=${GPU_CHECK_CPU_DECODE:-64}
  # Test-name filters (any of the words): the fixture parity of every format and version, the
  # three modes, and half-precision compute (on the first device named); the gradient and
  # loss fixtures; the WKV backward tests.
  local parity_filter=${GPU_CHECK_PARITY_FILTER:-matches_the hugging_face_folder_matches modes_agree half_precision_compute}
  local grads_filter=${GPU_CHECK_GRADS_FILTER:-grad_fixture:: loss_fixture::}
  local backward_filter=${GPU_CHECK_BACKWARD_FILTER:-backward_matches_autodiff}
  local deadline=$(($(date +%s) + ${GPU_CHECK_DEADLINE:-470}))
  local work=${TMPDIR:-/tmp}/gpu-check.$$
  local log="$out/gpu-check.log" steps="$out/steps.tsv"
  mkdir -p "$out" "$work"
  : >"$log"
  : >"$steps"
  rm -f "$out/parity.jsonl"
  export RWKV_FIXTURES="$fixtures" RWKV_PARITY_LOG="$out/parity.jsonl"

  # step NAME SECONDS COMMAND...: runs COMMAND under a time limit, its output into the log,
  # and records "NAME rc seconds" (rc 124: out of its time; "skipped": past the deadline).
  step() {
    local name=$1 limit=$2
    shift 2
    local now rc=0
    now=$(date +%s)
    if [ "$now" -ge "$deadline" ]; then
      printf '%s\tskipped\t0\n' "$name" >>"$steps"
      echo "== $name: skipped (past the deadline)" >>"$log"
      return 0
    fi
    [ $((now + limit)) -le "$deadline" ] || limit=$((deadline - now))
    echo "== $name (at most ${limit}s): $*" >>"$log"
    timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1 || rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - now))" >>"$steps"
    echo "gpu-check: $name: rc $rc after $(($(date +%s) - now)) s" >&2
  }

  {
    echo "date: $(date -u +%FT%TZ)"
    echo "cpus: $(nproc)"
    if command -v nvidia-smi >/dev/null; then
      nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
    else
      echo "gpu: none (no nvidia-smi)"
    fi
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())' 2>&1 || true
  } >"$out/machine.txt"

  # One step per device: on the H200 a kernel the NVIDIA driver failed to compile ("NVVM
  # compilation failed") poisoned the device, and every test sharing the process failed.
  local pd
  for pd in ${parity_devices//,/ }; do
    # On the H200 the Vulkan and wgpu steps spend their first minute compiling and autotuning
    # kernels (2026-12-04: RWKV-4's fixtures passed there, the rest ran past 70 s), so those
    # tune at the minimal level and get more time.
    # shellcheck disable=SC2086 # the filters are word lists
    case $pd in
      vulkan | wgpu) step "parity $pd" 120 env CUBECL_AUTOTUNE_LEVEL=minimal RWKV_DEVICES="$pd" \
        "$bin/suite" --test-threads 4 $parity_filter ;;
      *) step "parity $pd" 50 env RWKV_DEVICES="$pd" "$bin/suite" --test-threads 4 $parity_filter ;;
    esac
  done
  # shellcheck disable=SC2086
  step grads 45 env RWKV_DEVICES="$parity_devices" "$bin/train-suite" $grads_filter
  # shellcheck disable=SC2086
  step backward 60 env RWKV_DEVICES="$kernel_devices" "$bin/lib" $backward_filter
  local p d
  for p in $presets; do
    for d in $bench_devices; do
      step "bench $p $d" 60 sh -c '"$1" bench --preset "$2" --device "$3" --prefill "$4" --decode "$5" --batch 4 --json >"$6"' \
        sh "$bin/rwkv" "$p" "$d" "$prefill" "$decode" "$out/bench-$p-$d.json"
    done
  done
  # Text to train on: the tree's own sources and docs (several MB, about a million tokens).
  find . \( -path ./.gpu -o -path ./target -o -path ./.git \) -prune -o -type f \
    \( -name '*.rs' -o -name '*.md' \) -print0 | xargs -0 cat 2>/dev/null | head -c "$corpus_bytes" >"$work/corpus.txt" || true  # cat ends on SIGPIPE
  local c
  for c in $train_ctx; do
    local batch=$((train_tokens / c))
    [ $batch -ge 1 ] || batch=1
    [ $batch -le 8 ] || batch=8
    # shellcheck disable=SC2086 # the model is given as flags
    step "train ctx $c" 60 "$bin/rwkv-train" train $train_model --vocab world --ctx "$c" \
      --batch "$batch" --steps "$train_steps" --warmup 1 --eval-every 100000 --valid-fraction 0.01 \
      --device "$train_device" --data "$work/corpus.txt" --out "$work/train-$c"
    cp "$work/train-$c/metrics.csv" "$out/train-$c.csv" 2>/dev/null || true
    rm -rf "$work/train-$c"
  done
  step wkv 120 env RWKV_DEVICES="$kernel_devices" RWKV_BENCH_LENGTHS="$wkv_lengths" \
    CRITERION_HOME="$work/criterion" "$bin/wkv-bench" --bench wkv_kernels \
    --warm-up-time 0.5 --measurement-time 1 --noplot
  local t
  for t in $threads; do
    step "cpu $t" 30 sh -c '"$1" bench --preset 7-0.1b --device flex --threads "$2" --prefill 64 --decode "$3" --batch 1 --json >"$4"' \
      sh "$bin/rwkv" "$t" "$cpu_decode" "$out/cpu-$t.json"
  done

  python3 scripts/gpu-check-report.py "$out" "$work/criterion" >"$out/gpu-check.json"
  rm -rf "$work"
}

run() {
  local out=${OUT:-$pack/out}
  [ -f "$pack/pack.tar.xz" ] || { echo "gpu-check: no $pack/pack.tar.xz; run 'prepare' here first" >&2; exit 1; }
  local unpacked=${TMPDIR:-/tmp}/gpu-check-pack
  rm -rf "$unpacked"
  mkdir -p "$unpacked"
  # xz may be missing from a bare image; Python's lzma is always there.
  if command -v xz >/dev/null; then
    xz -dc "$pack/pack.tar.xz" | tar -C "$unpacked" -xf -
  else
    python3 -c 'import lzma, sys, tarfile; tarfile.open(fileobj=lzma.open(sys.argv[1])).extractall(sys.argv[2])' \
      "$pack/pack.tar.xz" "$unpacked"
  fi
  # The Vulkan loader, unpacked into / as the device tool's notes say (other packages can
  # break /); NVIDIA's ICD file where the driver's read-only mount keeps it.
  if ! ldconfig -p | grep -q 'libvulkan.so.1 ' || ! ldconfig -p | grep -q 'libGLdispatch.so.0 '; then
    for f in "$pack"/debs/*.deb; do dpkg -x "$f" /; done
    ldconfig
  fi
  local icd
  for icd in /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json \
    /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json; do
    if [ -f "$icd" ]; then
      export VK_DRIVER_FILES="${VK_DRIVER_FILES:-$icd}"
      break
    fi
  done
  # The machine's own libtorch; our NVRTC loader finds libnvrtc beside it (nvidia/cu13/lib).
  local torch_lib
  torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
  export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # The device tool brings back only the first few files of $OUT (by name: on 2026-12-04 the
  # eight bench and cpu JSONs came back and the log did not), so every step writes under
  # $unpacked/out and $OUT gets the summary, the log and the parity log.
  run_steps "$unpacked/out" "$unpacked/bin" "$unpacked/fixtures"
  mkdir -p "$out"
  cp "$unpacked/out/gpu-check.json" "$unpacked/out/gpu-check.log" "$out/"
  cp "$unpacked/out/parity.jsonl" "$out/" 2>/dev/null || true
  cat "$out/gpu-check.json"
  python3 -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1]))["ok"] else 1)' "$out/gpu-check.json"
}

dry_run() {
  # The CI test build's binaries (the same feature set as scripts/test.sh), the CPU only.
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rwkv-burn/target}"
  # shellcheck source=test-env.sh
  . scripts/test-env.sh
  local features=rwkv-burn/ndarray,rwkv-burn/tch,rwkv-burn/wgpu
  local bin="$CARGO_TARGET_DIR/gpu-check-dry/bin" out="$CARGO_TARGET_DIR/gpu-check-dry/out"
  rm -rf "$bin" "$out"
  mkdir -p "$bin"
  { cargo test --release --workspace --features "$features" --no-run --message-format=json
    cargo test --release --workspace --features "$features" --bench wkv --no-run --message-format=json
  } | pick_executables "$bin" link
  ln "$CARGO_TARGET_DIR/release/rwkv" "$CARGO_TARGET_DIR/release/rwkv-train" "$bin/"
  GPU_CHECK_DEVICES=flex GPU_CHECK_KERNEL_DEVICES=flex GPU_CHECK_BENCH_DEVICES=flex \
    GPU_CHECK_PRESETS=7-0.1b GPU_CHECK_PREFILL=8 GPU_CHECK_DECODE=4 GPU_CHECK_WKV_LENGTHS=16 \
    GPU_CHECK_TRAIN_DEVICE=flex GPU_CHECK_TRAIN_CTX=16 GPU_CHECK_TRAIN_STEPS=2 GPU_CHECK_TRAIN_TOKENS=32 \
    GPU_CHECK_TRAIN_MODEL="--version 7 --layers 2 --embd 128" GPU_CHECK_CORPUS_BYTES=20000 \
    GPU_CHECK_THREADS="1 2" GPU_CHECK_CPU_DECODE=4 \
    GPU_CHECK_PARITY_FILTER="rwkv7_safetensors_matches rwkv7_modes_agree" \
    GPU_CHECK_GRADS_FILTER=rwkv7_gradients GPU_CHECK_BACKWARD_FILTER=wkv7_backward \
    GPU_CHECK_DEADLINE=600 \
    run_steps "$out" "$bin" "${RWKV_FIXTURES:-$root/../shared/fixtures}"
  python3 scripts/gpu-check-report.py --check "$out/gpu-check.json"
  echo "gpu-check: dry run passed ($out/gpu-check.json)" >&2
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  dry-run) dry_run ;;
  *) usage ;;
esac
