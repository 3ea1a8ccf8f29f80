"""Fuzzing model file headers: a mutated GGUF or safetensors header is read or refused in one line, never a crash.

Our own readers run in-process (pure Python, so safe). The whole command, which hands files to MLX's native
readers, runs in a child process (this module run as a script): a SIGSEGV there fails the test instead of
killing pytest, and the child prints each mutation before trying it, so a crash names its input.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from macllm.cli import main
from macllm.errors import MacllmError
from macllm.formats.gguf_header import read_header
from macllm.formats.safetensors_header import check_safetensors
from tests.crafted_files import gguf_fields, safetensors_parts

REPO = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=250, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
CHILD_EXAMPLES = 150  # per format, through the whole command in the child process

EDGES = [0, 1, 2, 3, 4, 5, 31, 32, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63, 2**64 - 1]
u64 = st.one_of(st.sampled_from(EDGES), st.integers(0, 2**64 - 1))


@st.composite
def gguf_mutations(draw, data: bytes) -> tuple[str, bytes]:
    """(what was done, the mutated file): one header field set or shifted, or the file cut short."""
    fields, header_end = gguf_fields(data)
    kinds = sorted({f.kind for f in fields})
    how = draw(st.sampled_from(["set", "shift", "cut"]))
    if how == "cut":
        at = draw(st.one_of(st.integers(0, header_end + 64), st.integers(0, len(data) - 1)))
        return f"cut at {at}", data[:at]
    kind = draw(st.sampled_from(kinds))
    same = [f for f in fields if f.kind == kind]
    index = draw(st.integers(0, len(same) - 1))
    field = same[index]
    value = draw(u64) if how == "set" else field.read(data) + draw(st.integers(-3, 3))
    return f"{kind}[{index}] = {value}", field.write(data, value)


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                         st.text(max_size=8))
wide_ints = st.one_of(st.sampled_from([-1, *EDGES, 2**64, 2**70]), st.integers(-2**66, 2**66))


@st.composite
def safetensors_mutations(draw, data: bytes) -> tuple[str, bytes]:
    """(what was done, the mutated file): header length, JSON text, one entry's dtype/shape/offsets, or a cut."""
    header_len = int.from_bytes(data[:8], "little")
    header, body = json.loads(data[8:8 + header_len]), data[8 + header_len:]
    names = sorted(k for k in header if k != "__metadata__")
    how = draw(st.sampled_from(["length", "json", "dtype", "shape", "offsets", "entry", "cut"]))
    if how == "length":
        length = draw(st.one_of(u64, st.integers(max(0, header_len - 8), header_len + 8)))
        return f"header length {length}", length.to_bytes(8, "little") + data[8:]
    if how == "cut":
        at = draw(st.integers(0, len(data) - 1))
        return f"cut at {at}", data[:at]
    if how == "json":
        raw = data[8:8 + header_len]
        start = draw(st.integers(0, len(raw)))
        end = draw(st.integers(start, min(len(raw), start + 16)))
        patch = draw(st.binary(max_size=16))
        raw = raw[:start] + patch + raw[end:]
        return f"json[{start}:{end}] = {patch!r}", len(raw).to_bytes(8, "little") + raw + body
    name = draw(st.sampled_from(names))
    if how == "dtype":
        value = draw(st.one_of(st.sampled_from(["F64", "F8_E5M2", "I4", "", "f32"]), json_scalars))
    elif how == "shape":
        value = draw(st.one_of(json_scalars, st.lists(st.one_of(wide_ints, json_scalars), max_size=5)))
    elif how == "offsets":
        value = draw(st.one_of(json_scalars, st.lists(wide_ints, max_size=3)))
    else:
        value = draw(st.one_of(json_scalars, st.lists(json_scalars, max_size=2)))
    mutated = json.loads(json.dumps(header))
    if how == "entry":
        mutated[name] = value
    else:
        mutated[name][{"dtype": "dtype", "shape": "shape", "offsets": "data_offsets"}[how]] = value
    raw = json.dumps(mutated).encode()
    return f"{name}.{how} = {value!r}", len(raw).to_bytes(8, "little") + raw + body


# ---------------------------------------------------------------- in-process: our readers


def test_gguf_header_mutations_are_read_or_refused_in_one_line(tmp_path, tiny_llama_gguf):
    data = tiny_llama_gguf.read_bytes()
    path = tmp_path / "mutated.gguf"

    @FUZZ
    @given(gguf_mutations(data))
    def check(mutation):
        _, mutated = mutation
        path.write_bytes(mutated)
        try:
            read_header(path)
        except MacllmError as e:
            assert "\n" not in str(e)

    check()


def test_safetensors_header_mutations_are_accepted_or_refused(tmp_path, tiny_llama_folder):
    data = (tiny_llama_folder / "model.safetensors").read_bytes()
    path = tmp_path / "mutated.safetensors"

    @FUZZ
    @given(safetensors_mutations(data))
    def check(mutation):
        _, mutated = mutation
        path.write_bytes(mutated)
        try:
            check_safetensors(path)
        except ValueError as e:  # what callers turn into one line
            assert "\n" not in str(e)

    check()


def test_the_crafting_helpers_describe_the_real_files(tiny_llama_folder):
    header, body = safetensors_parts(tiny_llama_folder / "model.safetensors")
    end = max(entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__")
    assert end == len(body)


# ---------------------------------------------------------------- child process: the whole command


def test_mutated_model_files_never_crash_the_command(tmp_path, tiny_llama_gguf, tiny_llama_folder):
    env = {**os.environ, "MACLLM_HOME": str(tmp_path / "home")}
    env.pop("MACLLM_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "tests.test_fuzz_headers", str(tiny_llama_gguf),
                           str(tiny_llama_folder)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    last = done.stdout.strip().splitlines()[-1:] or ["(nothing tried)"]
    assert done.returncode == 0, f"exit {done.returncode} at {last[0]}\n{done.stderr[-3000:]}"
    assert "all mutations kept the promise" in done.stdout


def run_command(model: Path) -> tuple[int, str]:
    """`macllm generate` in this process (the child's): (exit code, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["generate", "--model", str(model), "-p", "hi", "--max-tokens", "1"])
    return code, err.getvalue()


def keeps_the_promise(description: str, model: Path) -> None:
    print(description, flush=True)  # the last line printed names the input if the process dies
    code, err = run_command(model)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("macllm: note:")]
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("macllm: error: "), (description, err[-500:])
    else:
        assert code == 0, (description, code, err[-500:])


def child(gguf_path: Path, folder: Path) -> None:
    child_settings = settings(max_examples=CHILD_EXAMPLES, deadline=None, database=None, derandomize=True,
                              suppress_health_check=list(HealthCheck))
    work = Path(tempfile.mkdtemp())
    mutated_gguf = work / "mutated.gguf"
    mutated_folder = Path(shutil.copytree(folder, work / "mutated"))

    @child_settings
    @given(gguf_mutations(gguf_path.read_bytes()))
    def gguf_case(mutation):
        description, data = mutation
        mutated_gguf.write_bytes(data)
        keeps_the_promise(f"gguf: {description}", mutated_gguf)

    @child_settings
    @given(safetensors_mutations((folder / "model.safetensors").read_bytes()))
    def safetensors_case(mutation):
        description, data = mutation
        (mutated_folder / "model.safetensors").write_bytes(data)
        keeps_the_promise(f"safetensors: {description}", mutated_folder)

    gguf_case()
    safetensors_case()
    shutil.rmtree(work)
    print("all mutations kept the promise", flush=True)


if __name__ == "__main__":
    child(Path(sys.argv[1]), Path(sys.argv[2]))
