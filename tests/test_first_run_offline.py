"""A new user's way in, with no network: a Hugging Face repo id that is not cached says so in one line with the
command that fetches it, and what is in the Hugging Face cache is listed by `macllm models` and runs offline."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from macllm.cli import main

REPO_ID = "mlx-community/SmolLM2-135M-Instruct-4bit"
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: connection refused at once, no network needed


@pytest.fixture
def env(tmp_path, monkeypatch) -> Path:
    """A fresh home and an empty Hugging Face cache; returns the cache folder."""
    cache = tmp_path / "hf"
    monkeypatch.setenv("MACLLM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def cache_model(cache: Path, repo_id: str, folder: Path, commit: str = "c" * 40) -> Path:
    """Put a model folder into the Hugging Face cache the way huggingface_hub lays it out (blobs linked from
    a snapshot named by refs/main)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for i, file in enumerate(sorted(p for p in folder.iterdir() if p.is_file())):
        blob = repo / "blobs" / f"{i:040x}"
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(Path("../..") / "blobs" / blob.name)
    return snapshot


def test_offline_and_not_cached_says_so_and_how_to_get_it(env, capsys):
    code, out, err = cli(capsys, "generate", "--model", REPO_ID, "-p", "hi")
    assert code == 2 and out == ""
    line = err.strip()
    assert "\n" not in line and line.startswith("macllm: error: ")
    assert f"{REPO_ID} is not cached here" in line and str(env) in line
    assert f"`hf download {REPO_ID}`" in line and "HF_HUB_OFFLINE" in line


def test_no_network_without_the_offline_flag_says_the_same_with_the_cause(env, monkeypatch, capsys):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE)  # read by huggingface_hub at import: a child process
    run = subprocess.run([sys.executable, "-m", "macllm.cli", "generate", "--model", REPO_ID, "-p", "hi"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stdout == ""
    errors = [line for line in run.stderr.splitlines() if line.startswith("macllm: error: ")]
    assert len(errors) == 1, run.stderr
    assert f"{REPO_ID} is not cached here" in errors[0] and "could not be downloaded now" in errors[0]
    assert "rerun this command" in errors[0] and f"`hf download {REPO_ID}`" in errors[0]


def test_models_lists_the_hugging_face_cache_and_the_repo_runs_offline(env, tiny_llama_folder, capsys):
    snapshot = cache_model(env, REPO_ID, tiny_llama_folder)
    cache_model(env, "someone/tokenizer-only", _tokenizer_only(env.parent / "tok"))
    code, out, err = cli(capsys, "models", "--json")
    assert code == 0, err
    rows = {row["name"]: row for row in json.loads(out)}
    row = rows[REPO_ID]
    assert row["source"] == "hf" and row["path"] == str(snapshot) and row["pulled"] is True
    assert row["architecture"] == "llama" and row["implementation"] == "own" and row["size_bytes"] > 0
    assert "someone/tokenizer-only" not in rows  # not a model: nothing to offer

    code, out, _ = cli(capsys, "models")
    listed = next(line for line in out.splitlines() if line.startswith(REPO_ID))
    assert "in the Hugging Face cache" in listed and " own " in listed

    code, out, err = cli(capsys, "generate", "--model", REPO_ID, "-p", "hello", "--max-tokens", "3", "--json")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["generation_tokens"] >= 1


def test_an_empty_or_missing_cache_lists_nothing_extra(env, capsys):
    code, out, _ = cli(capsys, "models", "--json")
    assert code == 0 and all(row["source"] != "hf" for row in json.loads(out))


def _tokenizer_only(folder: Path) -> Path:
    folder.mkdir()
    (folder / "tokenizer.json").write_text("{}")
    return folder
