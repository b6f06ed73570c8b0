"""Measures the official `rwkv` package (strategy 'cpu fp32') on a checkpoint the way
`rwkv bench` measures rwkv-burn: prefill tokens/s of one sequence-mode call, then decode
tokens/s of single-token steps. Prints one JSON object.

Write the very model `rwkv bench` measures with `rwkv bench --preset 7-0.1b --save-model
m.pth`, then: python benches/peers/official.py m.pth --version 7 --threads 1
(needs torch and rwkv==0.8.32: `bash scripts/setup.sh --tests`, then `. scripts/test-env.sh`).
"""
import argparse
import json
import os
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("model")
parser.add_argument("--version", required=True, help="4, 5, 6 or 7")
parser.add_argument("--prefill", type=int, default=512)
parser.add_argument("--decode", type=int, default=128)
parser.add_argument("--threads", type=int, default=1)
args = parser.parse_args()

if args.version == "7":
    os.environ["RWKV_V7_ON"] = "1"
os.environ.setdefault("RWKV_JIT_ON", "1")
os.environ.setdefault("RWKV_CUDA_ON", "0")
import torch  # noqa: E402

torch.set_num_threads(args.threads)
stdout, sys.stdout = sys.stdout, sys.stderr  # the package prints while loading
from rwkv.model import RWKV  # noqa: E402

name = args.model[: -len(".pth")] if args.model.endswith(".pth") else args.model
model = RWKV(model=name, strategy="cpu fp32")
sys.stdout = stdout

# Deterministic tokens inside every vocabulary.
tokens = [(i * 7919 + 13) % 50000 + 1 for i in range(args.prefill + args.decode)]
with torch.no_grad():
    start = time.perf_counter()
    out, state = model.forward(tokens[: args.prefill], None)
    prefill_s = time.perf_counter() - start
    start = time.perf_counter()
    for t in tokens[args.prefill :]:
        out, state = model.forward([t], state)
    decode_s = time.perf_counter() - start

print(
    json.dumps(
        {
            "engine": "rwkv==0.8.32 cpu fp32",
            "torch_threads": args.threads,
            "prefill_tokens_per_s": args.prefill / prefill_s,
            "decode_tokens_per_s": args.decode / decode_s,
        }
    )
)
