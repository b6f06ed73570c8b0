# Source this (`. scripts/test-env.sh`) after `bash scripts/setup.sh --tests`: it points the
# libtorch build (the `tch` feature) and the test binaries at the PyTorch wheel that setup put
# in a virtual environment, and tells the export test where the official `rwkv` package is.
# Safe to source twice; changes nothing but these variables.
#
# With RWKV_TORCH set to another version than 2.9.0 (see scripts/setup-torch.sh) it points at
# that version's venv, lets torch-sys build against it (LIBTORCH_BYPASS_VERSION_CHECK), and,
# unless CARGO_TARGET_DIR is set, builds in a target dir of its own.
if [ -n "${RWKV_TORCH:-}" ] && [ "$RWKV_TORCH" != 2.9.0 ]; then
  RWKV_TORCH_VENV="${RWKV_TORCH_VENV:-$HOME/.cache/rwkv-burn/torch-$RWKV_TORCH-venv}"
  export LIBTORCH_BYPASS_VERSION_CHECK=1
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rwkv-burn/target-torch-$RWKV_TORCH}"
fi
RWKV_TORCH_VENV="${RWKV_TORCH_VENV:-$HOME/.cache/rwkv-burn/torch-venv}"
if [ -x "$RWKV_TORCH_VENV/bin/python" ]; then
  export RWKV_TORCH_VENV
  export RWKV_PYTHON="$RWKV_TORCH_VENV/bin/python"
  # torch-sys asks `python` (inside a virtual environment) where libtorch is.
  export LIBTORCH_USE_PYTORCH=1
  export VIRTUAL_ENV="$RWKV_TORCH_VENV"
  case ":$PATH:" in *":$RWKV_TORCH_VENV/bin:"*) ;; *) export PATH="$RWKV_TORCH_VENV/bin:$PATH" ;; esac
  rwkv_torch_lib="$("$RWKV_PYTHON" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
  case ":${LD_LIBRARY_PATH:-}:" in
    *":$rwkv_torch_lib:"*) ;;
    *) export LD_LIBRARY_PATH="$rwkv_torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;;
  esac
  unset rwkv_torch_lib
else
  echo "test-env: no PyTorch environment at $RWKV_TORCH_VENV; run: bash scripts/setup.sh --tests" >&2
fi
