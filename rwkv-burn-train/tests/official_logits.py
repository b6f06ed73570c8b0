"""Runs a .pth through the official `rwkv` package (strategy 'cpu fp32') and prints the logits
of every position as JSON. Used by tests/export_official.rs to check `rwkv-train export`.

usage: official_logits.py MODEL.pth VERSION TOKENS_JSON
"""
import json
import os
import sys

path, version, tokens = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if version == "7":
    os.environ["RWKV_V7_ON"] = "1"
os.environ.setdefault("RWKV_JIT_ON", "1")
os.environ.setdefault("RWKV_CUDA_ON", "0")

import torch  # noqa: E402

torch.set_num_threads(1)
# The strict loader first: the file must load without executing arbitrary pickled code.
weights = torch.load(path, map_location="cpu", weights_only=True)
assert all(isinstance(v, torch.Tensor) for v in weights.values())

sys.stdout = sys.stderr  # the package prints while loading; keep stdout for the result
from rwkv.model import RWKV  # noqa: E402

model = RWKV(model=path[: -len(".pth")], strategy="cpu fp32", **({} if version == "7" else {"verbose": False}))
with torch.no_grad():
    logits, _ = model.forward(tokens, None, full_output=True)
sys.stdout = sys.__stdout__
print(json.dumps(logits.float().reshape(len(tokens), -1).tolist()))
