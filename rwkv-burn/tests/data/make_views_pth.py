"""Writes views.pth and views-p4.pth, the checkpoints `formats::pth_bytes_read_as_the_file_does`
reads: tensors saved as views (a transpose, an offset into a shared storage), a parameter,
f16/bf16/f64, an int64, an empty and a 0-d tensor; nested under "state_dict" beside values
that are not tensors (pickle protocol 2), and the same state dict flat at protocol 4.
Written with PyTorch 2.9.0: ~/.cache/rwkv-burn/torch-venv/bin/python make_views_pth.py
"""
import collections

import torch

torch.manual_seed(0)
base = torch.randn(4, 6)
sd = collections.OrderedDict()
sd["blocks.0.att.key.weight"] = base.t()  # transposed view (strided)
sd["blocks.0.att.value.weight"] = base[1:3]  # offset view into the same storage
sd["blocks.0.ln1.weight"] = torch.nn.Parameter(torch.randn(5).to(torch.bfloat16))
sd["head.weight"] = torch.randn(3, 2).to(torch.float16)
sd["emb.weight"] = torch.randn(2, 3, dtype=torch.float64)
sd["step"] = torch.tensor([7], dtype=torch.int64)
sd["empty"] = torch.zeros(0, 3)
sd["scalar"] = torch.tensor(1.5)
torch.save({"state_dict": sd, "epoch": 3, "lr": 1e-3, "names": ["a", "b"]}, "views.pth")
torch.save(sd, "views-p4.pth", pickle_protocol=4)
# What the test checks against (the row-major values' first four):
for k, v in sd.items():
    print(k, v.dtype, tuple(v.shape), v.contiguous().view(-1)[:4].tolist())
