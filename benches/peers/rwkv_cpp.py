"""Measures rwkv.cpp (built separately, never vendored) the way `rwkv bench` measures
rwkv-burn: prefill tokens/s of one prompt evaluated in sequence mode (chunks of 16, rwkv.cpp's
recommended size), then decode tokens/s of single-token steps. Prints one JSON object.

Build rwkv.cpp (its repository's own instructions), convert the model `rwkv bench
--preset P --save-model P.pth` wrote with its `python/convert_pytorch_to_ggml.py P.pth P.bin
FP32`, then: python benches/peers/rwkv_cpp.py RWKV_CPP_DIR P.bin --threads 1
"""
import argparse
import json
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("rwkv_cpp_dir", help="an rwkv.cpp checkout with build/librwkv.so")
parser.add_argument("model", help="an rwkv.cpp model file")
parser.add_argument("--prefill", type=int, default=512)
parser.add_argument("--decode", type=int, default=128)
parser.add_argument("--threads", type=int, default=1)
parser.add_argument("--chunk", type=int, default=16)
args = parser.parse_args()

sys.path.insert(0, f"{args.rwkv_cpp_dir}/python")
from rwkv_cpp import rwkv_cpp_model, rwkv_cpp_shared_library  # noqa: E402

library = rwkv_cpp_shared_library.load_rwkv_shared_library()
model = rwkv_cpp_model.RWKVModel(library, args.model, thread_count=args.threads)
# The same deterministic tokens as benches/peers/official.py.
tokens = [(i * 7919 + 13) % 50000 + 1 for i in range(args.prefill + args.decode)]
start = time.perf_counter()
logits, state = model.eval_sequence_in_chunks(
    tokens[: args.prefill], None, chunk_size=args.chunk, use_numpy=True
)
prefill_s = time.perf_counter() - start
start = time.perf_counter()
for t in tokens[args.prefill :]:
    logits, state = model.eval(t, state, state, logits, use_numpy=True)
decode_s = time.perf_counter() - start
print(
    json.dumps(
        {
            "engine": f"rwkv.cpp FP32 (chunk {args.chunk})",
            "threads": args.threads,
            "prefill_tokens_per_s": args.prefill / prefill_s,
            "decode_tokens_per_s": args.decode / decode_s,
        }
    )
)
