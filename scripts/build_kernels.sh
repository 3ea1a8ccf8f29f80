#!/usr/bin/env bash
# Builds macllm's CPU quantized-matmul extension (csrc/ -> macllm/cpu_kernels/_cpu_quant*.so) against
# the venv's mlx and nanobind. Called by scripts/setup.sh; fast when nothing changed (a stamp on the
# sources' hash and the mlx/nanobind versions). Never fails set-up: on failure it writes the reason as
# one line to build/cpu_kernels/FAILED (`macllm doctor` shows it) and macllm runs on its other paths.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY="${VENV_PYTHON:-$ROOT/.venv/bin/python}"
BUILD="$ROOT/build/cpu_kernels"
LOG="$BUILD/build.log"
mkdir -p "$BUILD"

log() { printf 'setup: %s\n' "$*" >&2; }
fail() {
  echo "$1" > "$BUILD/FAILED"
  rm -f "$BUILD/stamp"
  log "CPU kernels not built: $1 (macllm runs without them; details in build/cpu_kernels/build.log)"
  exit 0
}

VERSIONS=$("$PY" -c "import mlx.core as mx, nanobind, sys; print(mx.__version__, nanobind.__version__, sys.version.split()[0])" 2>>"$LOG") \
  || fail "mlx or nanobind is not importable in the venv"
WANT=$( (cat csrc/*; echo "$VERSIONS"; uname -m) | sha256sum | cut -d' ' -f1)
if [ -f "$BUILD/stamp" ] && [ "$(cat "$BUILD/stamp")" = "$WANT" ] && ls macllm/cpu_kernels/_cpu_quant*.so >/dev/null 2>&1; then
  exit 0
fi
rm -f "$BUILD/FAILED"
: > "$LOG"

SUDO=""
[ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
can_apt() { command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; }; }

if ! command -v c++ >/dev/null 2>&1 && ! command -v g++ >/dev/null 2>&1 && ! command -v clang++ >/dev/null 2>&1; then
  if can_apt; then
    log "installing a C++ compiler (g++) for the CPU kernels"
    { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq g++; } >>"$LOG" 2>&1 \
      || fail "could not install g++ with apt-get"
  elif [ "$(uname -s)" = "Darwin" ]; then
    fail "no C++ compiler: install Xcode's command-line tools (xcode-select --install)"
  else
    fail "no C++ compiler: install g++ (apt-get install g++)"
  fi
fi

# cmake >= 3.24: the system's if new enough, else pip's into the venv.
CMAKE=cmake
cmake_ok() {
  command -v "$1" >/dev/null 2>&1 || return 1
  "$1" --version 2>/dev/null | head -1 | awk '{split($3, v, "."); exit !(v[1] > 3 || (v[1] == 3 && v[2] >= 24))}'
}
if ! cmake_ok cmake; then
  if [ ! -x "$ROOT/.venv/bin/cmake" ] || ! cmake_ok "$ROOT/.venv/bin/cmake"; then
    log "installing cmake into the venv (pip) for the CPU kernels"
    "$PY" -m pip install -q "cmake>=3.24" >>"$LOG" 2>&1 || fail "could not install cmake (pip install cmake)"
  fi
  CMAKE="$ROOT/.venv/bin/cmake"
fi

log "building the CPU quantized-matmul kernels (about a minute)"
OUT="$BUILD/out"
rm -rf "$OUT"
{ "$CMAKE" -S csrc -B "$BUILD/cmake" -DPython_EXECUTABLE="$PY" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$OUT" \
  && "$CMAKE" --build "$BUILD/cmake" -j "$(nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 2)"; } >>"$LOG" 2>&1 \
  || fail "$(grep -m1 -E 'error:|CMake Error' "$LOG" | cut -c1-200 || echo 'cmake failed')"

SO=$(ls "$OUT"/_cpu_quant*.so 2>/dev/null | head -1)
[ -n "$SO" ] || fail "the build produced no module"
# Install atomically: a half-copied module must never be importable.
cp "$SO" "macllm/cpu_kernels/.$(basename "$SO").tmp" && mv -f "macllm/cpu_kernels/.$(basename "$SO").tmp" "macllm/cpu_kernels/$(basename "$SO")" \
  || fail "could not install the module into macllm/cpu_kernels"
# One real call: a module built against another nanobind ABI imports fine and fails only when called.
"$PY" -c "import macllm.cpu_kernels as k, mlx.core as mx
assert k.extension is not None, k.build_status
w, s, b = mx.quantize(mx.ones((8, 64)), group_size=32, bits=4)
mx.eval(k.quantized_matmul(mx.ones((1, 64)), w, s, b, 32, 4))" >>"$LOG" 2>&1 \
  || { rm -f macllm/cpu_kernels/_cpu_quant*.so; fail "the module was built but does not run: $(tail -1 "$LOG" | cut -c1-160)"; }
echo "$WANT" > "$BUILD/stamp"
log "CPU kernels built"
