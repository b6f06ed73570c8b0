"""Dequantizes rows of ggml blocks with llama.cpp's own gguf-py (the reference for
`tests/suite/formats.rs`): python ggml_dequantize.py TYPE IN ROWS OUT, where IN holds ROWS rows
of raw blocks of TYPE (e.g. Q4_K) and OUT receives the values as little-endian f32."""
import sys

import numpy as np
from gguf import GGMLQuantizationType, quants

kind, source, rows, target = sys.argv[1:]
raw = np.fromfile(source, dtype=np.uint8).reshape(int(rows), -1)
values = quants.dequantize(raw, GGMLQuantizationType[kind])
values.astype("<f4").tofile(target)
