"""Real chat templates with tools (Llama 3.1, Mistral Nemo, Qwen2.5), as llama.cpp keeps them in
models/templates/ of llama-cpp-python's source package on PyPI: downloaded once with pip into the test cache
($MACLLM_TEST_HOME/templates). Without pip or the registry the test is skipped (fails under CI=true)."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from tests.conftest import ON_CI, TEST_HOME

VERSION = "0.3.36"
TEMPLATES = {
    "llama3_1": "meta-llama-Llama-3.1-8B-Instruct.jinja",
    "mistral_nemo": "mistralai-Mistral-Nemo-Instruct-2407.jinja",
    "qwen2_5": "Qwen-Qwen2.5-7B-Instruct.jinja",
}


def llama_cpp_template(name: str) -> str:
    folder = TEST_HOME / "templates" / f"llama-cpp-python-{VERSION}"
    path = folder / TEMPLATES[name]
    if not all((folder / f).is_file() for f in TEMPLATES.values()):
        _download(folder)
    return path.read_text(encoding="utf-8")


def _download(folder: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        got = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                              f"llama-cpp-python=={VERSION}", "-d", tmp], capture_output=True, text=True, timeout=600)
        archives = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if got.returncode != 0 or not archives:
            reason = f"pip download llama-cpp-python=={VERSION} failed: {got.stderr.strip()[-300:]}"
            if ON_CI:
                pytest.fail(reason, pytrace=False)
            pytest.skip(reason)
        folder.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archives[0]) as archive:
            for member in archive.getmembers():
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and "/models/templates/" in member.name and base in TEMPLATES.values():
                    data = archive.extractfile(member)
                    assert data is not None
                    (folder / f".{base}.part").write_bytes(data.read())
                    (folder / f".{base}.part").replace(folder / base)
