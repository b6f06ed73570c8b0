#!/usr/bin/env bash
# Installs the PyTorch wheel that the libtorch backend links against (burn-tch 0.22.1 expects
# libtorch 2.9.0) and the official `rwkv` package that the export round-trip test runs, into one
# virtual environment. Run by `scripts/setup.sh --tests`; `. scripts/test-env.sh` then points
# the build and the tests at it.
set -euo pipefail

venv="${RWKV_TORCH_VENV:-$HOME/.cache/rwkv-burn/torch-venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "setup-torch: creating $venv" >&2
  "$python" -m venv "$venv"
fi
# The versions the fixtures were computed with (../shared/fixtures/README.md).
if ! "$venv/bin/python" -c 'import torch, rwkv, numpy; assert torch.__version__.startswith("2.9.0")' 2>/dev/null; then
  echo "setup-torch: installing torch 2.9.0, rwkv 0.8.32 (a few GB on first run)" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "torch==2.9.0" "rwkv==0.8.32" "numpy>=1.26" >&2
fi
echo "setup-torch: torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)') in $venv" >&2
