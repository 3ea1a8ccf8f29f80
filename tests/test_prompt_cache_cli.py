"""`macllm cache list|clear|limit` and `--prompt-cache-mb`: a repeated system prompt in a second `macllm generate`
process reads only what is new; bad caps are one line, exit 2. Tiny random model."""

from __future__ import annotations

import json

import pytest

from macllm.cli import main

SYSTEM = "You answer questions about the harbour town. " * 8  # ~360 tokens on the tiny byte-level vocabulary


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MACLLM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MACLLM_PROMPT_CACHE_MB")  # conftest turns the cache off for other tests
    return tmp_path / "home"


def generate(model, question: str, capsys) -> dict:
    code = main(["generate", "--model", str(model), "--chat", "--system", SYSTEM, "-p", question, "--json",
                 "--max-tokens", "3"])
    assert code == 0
    return json.loads(capsys.readouterr().out)


def test_a_repeated_system_prompt_is_read_from_the_cache_then_listed_and_cleared(tiny_llama_folder, capsys, home):
    first = generate(tiny_llama_folder, "Where is the pier?", capsys)
    assert first["prefilled_tokens"] == first["prompt_tokens"]
    second = generate(tiny_llama_folder, "When does the bakery open?", capsys)
    assert second["prefilled_tokens"] < 40 < second["prompt_tokens"]

    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["MODEL", "TOKENS", "KV", "ADAPTERS", "SIZE", "LAST", "USED", "FILE"]
    assert str(tiny_llama_folder) in out[1] and "full" in out[1]
    # One file: the second run read too little (under 256 tokens) to be worth saving again.
    assert out[-1].startswith("1 file,") and "cap 2048 MiB" in out[-1]

    assert main(["cache", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["limit_mb"] == 2048 and len(listed["files"]) == 1
    assert first["prompt_tokens"] < listed["files"][0]["tokens"] <= first["prompt_tokens"] + 3  # prompt + answer

    assert main(["doctor", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["prompt_cache"].endswith(": 1 file, 0.2 MiB (cap 2048 MiB)")

    assert main(["cache", "clear"]) == 0
    assert capsys.readouterr().out.startswith("Removed 1 prompt cache file ")
    assert main(["cache", "list"]) == 0
    assert capsys.readouterr().out.startswith("No saved prompt caches")


def test_the_cap_is_a_setting_the_flag_and_environment_override(tiny_llama_folder, capsys, monkeypatch, home):
    assert main(["cache", "limit"]) == 0
    assert capsys.readouterr().out.strip() == "2048 MiB"
    assert main(["cache", "limit", "0"]) == 0
    assert capsys.readouterr().out.strip() == "Prompt cache cap: 0 MiB (off)"
    generate(tiny_llama_folder, "Where is the pier?", capsys)
    assert not (home / "cache").exists()  # off: nothing written
    code = main(["generate", "--model", str(tiny_llama_folder), "--chat", "--system", SYSTEM, "-p", "Hi", "--json",
                 "--max-tokens", "3", "--prompt-cache-mb", "16"])
    assert code == 0 and len(list((home / "cache").glob("*.safetensors"))) == 1  # the flag wins over the setting
    monkeypatch.setenv("MACLLM_PROMPT_CACHE_MB", "32")
    assert main(["cache", "limit"]) == 0
    assert "32 MiB" in capsys.readouterr().out


@pytest.mark.parametrize("argv, said", [
    (["cache", "limit", "lots"], "the cap must be a whole number of MiB"),
    (["cache", "limit", "-3"], "the cap must be a whole number of MiB"),
    (["generate", "-p", "x", "--prompt-cache-mb", "-1"], "--prompt-cache-mb must be a whole number of MiB"),
])
def test_a_bad_cap_is_one_line(argv, said, capsys, tiny_llama_folder):
    if argv[0] == "generate":
        argv = argv + ["--model", str(tiny_llama_folder)]
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and said in err[0], err


def test_a_bad_environment_cap_is_one_line(capsys, monkeypatch, tiny_llama_folder):
    monkeypatch.setenv("MACLLM_PROMPT_CACHE_MB", "big")
    assert main(["generate", "-p", SYSTEM, "--model", str(tiny_llama_folder), "--max-tokens", "2"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "$MACLLM_PROMPT_CACHE_MB must be a whole number of MiB" in err[-1], err


def test_a_cap_that_cannot_be_saved_is_one_line(capsys, monkeypatch, home):
    from tests.read_only_folder import read_only

    home.mkdir(parents=True, exist_ok=True)
    read_only(monkeypatch, home)
    assert main(["cache", "limit", "100"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "cannot save the prompt cache cap" in err[0], err
