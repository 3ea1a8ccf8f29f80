#!/usr/bin/env bash
# On an x86-64 Linux machine: cross-compiles the CPU kernels' standalone self-test for arm64 and runs it
# under qemu (the NEON kernel against the scalar one, csrc/selftest.cpp), and checks that the MLX-facing
# source compiles for arm64. Not part of set-up or CI; needs g++-aarch64-linux-gnu and qemu-user
# (apt-get install g++-aarch64-linux-gnu qemu-user). On a real arm64 machine tests/test_cpu_kernels.py
# is the check.
set -euo pipefail
cd "$(dirname "$0")/../csrc"
CXX=aarch64-linux-gnu-g++
command -v "$CXX" >/dev/null && command -v qemu-aarch64 >/dev/null || {
  echo "needs $CXX and qemu-aarch64: apt-get install g++-aarch64-linux-gnu qemu-user" >&2
  exit 2
}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
"$CXX" -std=c++17 -O2 -Wall -static -I. selftest.cpp cpu_features.cpp qmm_scalar.cpp qmm_dispatch.cpp qmm_neon.cpp thread_pool.cpp \
  -o "$OUT/selftest"
qemu-aarch64 "$OUT/selftest"
MLX_INCLUDE=$(../.venv/bin/python -c "import mlx, os; print(os.path.join(mlx.__path__[0], 'include'))")
# Every source but the x86-only kernels, the self-test (built above) and the bindings (nanobind's headers).
MLX_FACING=$(ls *.cpp | grep -v -E '^(qmm_avx|lora_avx|selftest|bindings)')
for f in $MLX_FACING; do
  "$CXX" -std=c++20 -fsyntax-only -Wall -Wno-psabi -I. -I"$MLX_INCLUDE" "$f"
done
echo "arm64: the MLX-facing sources compile ($(echo $MLX_FACING | wc -w) files)"
