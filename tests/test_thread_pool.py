"""The kernels' thread pool under many small jobs of changing sizes (tests/cpp/thread_pool_stress.cpp).

A decode step hands the pool dozens of jobs of different task counts microseconds apart. With the task count
kept beside the job's generation instead of in the same atomic word, a worker finishing late could read the
new job's count with the old generation, claim a task, and so run one task twice: the job's completion count
then never matched and the decode hung (seen in scripts/bench.py). The stress program failed within ~100,000
jobs on the old pool; it must finish every job with each task run exactly once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ON_CI

ROOT = Path(__file__).resolve().parents[1]
CXX = next((c for c in (os.environ.get("CXX"), "c++", "g++", "clang++") if c and shutil.which(c)), None)


@pytest.fixture(scope="module")
def stress(tmp_path_factory) -> Path:
    if CXX is None:
        if ON_CI:
            pytest.fail("CI builds the CPU kernels, so it has a C++ compiler", pytrace=False)
        pytest.skip("no C++ compiler")
    out = tmp_path_factory.mktemp("pool") / "thread_pool_stress"
    subprocess.run([CXX, "-std=c++17", "-O2", "-pthread", f"-I{ROOT / 'csrc'}",
                    str(ROOT / "tests" / "cpp" / "thread_pool_stress.cpp"), str(ROOT / "csrc" / "thread_pool.cpp"),
                    "-o", str(out)], check=True)
    return out


@pytest.mark.parametrize("threads", [2, 3])
def test_every_task_of_every_job_runs_once(stress, threads):
    run = subprocess.run([str(stress), "500000"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "MACLLM_CPU_THREADS": str(threads)})
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith(f"ok: 500000 jobs on {threads} threads")
