#!/usr/bin/env bash
# Idempotent set-up: system BLAS on Linux, a virtualenv in .venv, macllm installed editable with test extras.
# Fast when nothing changed (a stamp keyed on pyproject.toml), so `scripts/run` and `scripts/test` call it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY=${PYTHON:-python3}

log() { printf 'setup: %s\n' "$*" >&2; }

# Linux: MLX's CPU wheel links a reference BLAS; OpenBLAS makes float32 matmuls ~80x faster.
if [ "$(uname -s)" = "Linux" ] && ! ls /usr/lib/*/openblas-pthread/libopenblas*.so* >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
    if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
      log "installing libopenblas0-pthread (fast CPU matmuls)"
      $SUDO apt-get update -qq >/dev/null && \
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libopenblas0-pthread >/dev/null || \
        log "could not install libopenblas0-pthread; macllm will run, slowly"
    else
      log "please install libopenblas0-pthread (apt-get install libopenblas0-pthread) for fast CPU matmuls"
    fi
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv in .venv"
  "$PY" -m venv "$VENV"
fi

STAMP="$VENV/.macllm-setup-stamp"
WANT=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  log "installing macllm and its dependencies (first run takes a minute)"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install -q -e ".[test]"
  echo "$WANT" > "$STAMP"
fi

# Our CPU quantized-matmul kernels (csrc/): never fails set-up; `macllm doctor` says why when not built.
bash scripts/build_kernels.sh
