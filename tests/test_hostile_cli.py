"""Hostile command lines (issue #13, item 8): each is one `macllm: error:` line and exit 2, never exit 1.

Seeds outside MLX's unsigned 64-bit range, and argv bytes that are not UTF-8 (Python hands those over as
surrogate escapes, which the tokenizer and the terminal cannot take). Text arguments are refused, not
repaired: a prompt with bytes replaced would silently be another prompt (`--prompt-file` refuses a
non-UTF-8 file the same way).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from macllm.cli import main
from tests.test_bad_input import error_line
from tests.test_cli import run_macllm

NOT_UTF8 = b"caf\xe9 \xff"


def run_bytes_argv(home, *args: str | bytes) -> subprocess.CompletedProcess:
    """`macllm ARGS` with raw bytes in argv, as a shell passes `$'\\xff'`."""
    env = {**os.environ, "MACLLM_HOME": str(home), "LC_ALL": "C.UTF-8"}
    env.pop("MACLLM_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "macllm.cli", *args], env=env, capture_output=True, timeout=120)


def one_error_line(done: subprocess.CompletedProcess) -> str:
    done = subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(errors="replace"),
                                       done.stderr.decode(errors="replace"))
    return error_line(done)


@pytest.mark.parametrize("seed", ["-1", "100000000000000000000000", str(2**64)])
def test_seed_outside_the_unsigned_64_bit_range_says_the_range(tmp_path, tiny_llama_gguf, seed):
    line = error_line(run_macllm(tmp_path / "home", "generate", "--model", tiny_llama_gguf, "-p", "hi",
                                 "--seed", seed, "--temp", "1"))
    assert "--seed" in line and "18446744073709551615" in line, line


def test_chat_seed_is_checked_too(tmp_path, tiny_llama_gguf):
    line = error_line(run_macllm(tmp_path / "home", "chat", "--plain", "--model", tiny_llama_gguf, "--seed", "-5",
                                 stdin=""))
    assert "--seed" in line, line


def test_largest_seed_samples(cli_in_process, tiny_llama_gguf):
    code, _, err = cli_in_process("generate", "--model", tiny_llama_gguf, "-p", "hi", "--max-tokens", "2",
                                  "--temp", "1", "--seed", str(2**64 - 1))
    assert code == 0, err


@pytest.mark.parametrize("command", [
    ["generate", "-p", NOT_UTF8],
    ["generate", "--chat", "-p", "hi", "--system", NOT_UTF8],
    ["generate", "-p", "hi", "--stop", NOT_UTF8],
    ["tokenize", "--text", NOT_UTF8],
])
def test_text_that_is_not_utf8_is_one_line(tmp_path, tiny_llama_folder, command):
    line = one_error_line(run_bytes_argv(tmp_path / "home", command[0], "--model", str(tiny_llama_folder),
                                         *command[1:]))
    assert "UTF-8" in line and "0xe9" in line, line


def test_plain_chat_system_prompt_that_is_not_utf8(tmp_path, tiny_llama_folder):
    line = one_error_line(run_bytes_argv(tmp_path / "home", "chat", "--plain", "--model", str(tiny_llama_folder),
                                         "--system", NOT_UTF8))
    assert "--system" in line and "UTF-8" in line, line


def test_surrogate_escaped_text_in_process(cli_in_process, tiny_llama_folder):
    # What Python makes of b"\xff" in argv under a UTF-8 locale.
    code, _, err = cli_in_process("tokenize", "--model", tiny_llama_folder, "--text", "caf\udce9")
    assert code == 2 and err.startswith("macllm: error: --text is not UTF-8 text"), err


def test_internal_errors_stay_on_one_line(cli_in_process, monkeypatch, tiny_llama_folder):
    from macllm.commands import tokenize_cmd

    def explode(args):
        raise TypeError("first line\nsecond line\nthird line")

    monkeypatch.setattr(tokenize_cmd, "run", explode)
    code, _, err = cli_in_process("tokenize", "--model", tiny_llama_folder, "--text", "x")
    assert code == 1 and len(err.strip().splitlines()) == 1, err


@pytest.fixture
def cli_in_process(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MACLLM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MACLLM_DEBUG", raising=False)

    def run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_plain_chat_line_that_is_not_utf8_is_refused_and_the_chat_goes_on(tmp_path, tiny_llama_folder):
    env = {**os.environ, "MACLLM_HOME": str(tmp_path / "home"), "LC_ALL": "C.UTF-8"}
    env.pop("MACLLM_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "macllm.cli", "chat", "--plain", "--model", str(tiny_llama_folder),
                           "--max-tokens", "2"], input=b"caf\xe9\nhello\n/quit\n", env=env, capture_output=True,
                          timeout=120)
    err = done.stderr.decode(errors="replace")
    assert done.returncode == 0 and "Traceback" not in err, err
    assert "not UTF-8 text" in err and "2 tokens" in err, err  # refused, then the next line was answered


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_train_seed_range_is_said(tmp_path, seed):
    # The trainer derives per-step seeds from it (seed * 1_000_003 + step), so its range is 32 bits.
    line = error_line(run_macllm(tmp_path / "home", "train", "--notes", tmp_path, "--seed", seed))
    assert "must be a whole number from 0 to 4294967295" in line, line
