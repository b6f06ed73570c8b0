#!/usr/bin/env bash
# Installs the PyTorch wheel that the libtorch backend links against (burn-tch 0.22.1 expects
# libtorch 2.9.0), the official `rwkv` package that the export round-trip test runs, and the
# official `openai` client that the server test drives `rwkv serve` with, into one virtual
# environment. Run by `scripts/setup.sh --tests`; `. scripts/test-env.sh` then points
# the build and the tests at it.
#
# RWKV_TORCH=2.11.0 (any other version) installs that PyTorch instead, in a venv of its own
# (torch-<version>-venv), for building against the libtorch of a machine that has it (the GPU
# machines here have 2.11, CUDA 13): `RWKV_TORCH=2.11.0 bash scripts/setup-torch.sh`, then
# `RWKV_TORCH=2.11.0 . scripts/test-env.sh` (which also picks a target dir of its own, as
# switching libtorch rebuilds everything above torch-sys).
set -euo pipefail

torch="${RWKV_TORCH:-2.9.0}"
if ! [[ "$torch" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
  echo "setup-torch: RWKV_TORCH must be a version like 2.11.0, is '$torch'" >&2
  exit 1
fi
default_venv="$HOME/.cache/rwkv-burn/torch-venv"
[ "$torch" = 2.9.0 ] || default_venv="$HOME/.cache/rwkv-burn/torch-$torch-venv"
venv="${RWKV_TORCH_VENV:-$default_venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "setup-torch: creating $venv" >&2
  "$python" -m venv "$venv"
fi
# The versions the fixtures were computed with (../shared/fixtures/README.md).
if ! "$venv/bin/python" -c "import torch, rwkv, numpy; assert torch.__version__.startswith('$torch')" 2>/dev/null; then
  echo "setup-torch: installing torch $torch, rwkv 0.8.32 (a few GB on first run)" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "torch==$torch" "rwkv==0.8.32" "numpy>=1.26" >&2
fi
if ! "$venv/bin/python" -c "import openai; assert openai.__version__ == '3.60.0'" 2>/dev/null; then
  echo "setup-torch: installing openai 3.60.0" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "openai==3.60.0" >&2
fi
# llama.cpp's gguf-py: the reference dequantizer of the GGUF K-quant test.
if ! "$venv/bin/python" -c "import gguf, importlib.metadata as m; assert m.version('gguf') == '0.19.0'" 2>/dev/null; then
  echo "setup-torch: installing gguf 0.19.0" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "gguf==0.19.0" >&2
fi
echo "setup-torch: torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)') in $venv" >&2
