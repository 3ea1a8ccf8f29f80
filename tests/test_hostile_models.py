"""Crafted model files: one line, exit 2, never a crash (GGUF headers MLX's native reader would trust).

Cases that crashed the process (SIGSEGV) run the real command in a fresh process, so a crash fails the test
instead of killing pytest; the others call macllm's readers in-process.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import pytest

from macllm.errors import MacllmError
from macllm.formats.arrays import load_arrays
from macllm.formats.gguf_header import read_header
from macllm.formats.gguf_model import gguf_summary
from macllm.formats.safetensors import read_weights
from macllm.loader import read_model_files, read_tokenizer
from tests import tiny_models
from tests.crafted_files import first, gguf_fields, safetensors_parts, with_field, write_safetensors
from tests.test_bad_input import error_line, folder_copy, generate_error
from tests.test_cli import run_macllm


@pytest.fixture(autouse=True)
def model_cache(tmp_path, monkeypatch):
    """In-process reads may import a GGUF into the model cache: keep it in the test's folder."""
    monkeypatch.setenv("MACLLM_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def aligned_gguf(tmp_path_factory):
    """The tiny GGUF with general.alignment = 64 written into its metadata."""
    import gguf

    original = gguf.GGUFWriter.add_name

    def add_name_and_alignment(self, name):
        original(self, name)
        self.add_custom_alignment(64)

    gguf.GGUFWriter.add_name = add_name_and_alignment
    try:
        return tiny_models.write_tiny_gguf(tmp_path_factory.mktemp("aligned") / "aligned.gguf")
    finally:
        gguf.GGUFWriter.add_name = original


# Each of these made MLX's GGUF reader read far outside the file: SIGSEGV, exit 139.
CRASHED = [
    ("n_tensors", 2**62, 0),
    ("n_kv", 2**62, 0),
    ("n_kv", None, 1),
    ("n_dims", 2**31, 0),
    ("n_dims", 0, 0),
    ("n_dims", 5, 0),
    ("key_length", 2**62, 0),
    ("name_length", 2**40, 0),
]


@pytest.mark.parametrize("kind, value, delta", CRASHED)
def test_gguf_header_that_crashed_mlx_is_one_line(tmp_path, tiny_llama_gguf, kind, value, delta):
    crafted = with_field(tiny_llama_gguf, tmp_path / "crafted.gguf", kind, value, delta)
    message = generate_error(tmp_path, crafted)
    assert "crafted.gguf" in message


def test_one_tensor_more_than_the_file_holds(tmp_path, tiny_llama_gguf):
    crafted = with_field(tiny_llama_gguf, tmp_path / "crafted.gguf", "n_tensors", delta=1)
    assert "download it again" in generate_error(tmp_path, crafted)


def test_models_listing_survives_a_crafted_gguf(tmp_path, tiny_llama_gguf):
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    with_field(tiny_llama_gguf, home / "models" / "crafted.gguf", "n_kv", 2**62)
    done = run_macllm(home, "models")
    assert done.returncode == 0, done.stderr
    assert "crafted" in done.stdout


def test_tokenize_with_a_crafted_gguf_is_one_line(tmp_path, tiny_llama_gguf):
    crafted = with_field(tiny_llama_gguf, tmp_path / "crafted.gguf", "n_dims", 2**31)
    message = error_line(run_macllm(tmp_path / "home", "tokenize", "--model", crafted, "--text", "hi"))
    assert "crafted.gguf" in message


# Header fields with impossible values, checked in-process: every reader refuses them with one line.
IMPOSSIBLE = [
    ("n_tensors", None, 1, "tensor"),
    ("n_kv", None, -1, ""),
    ("dim", 0, 0, "zero"),
    ("dim", 2**31, 0, "dimension"),
    ("dim", 2**63, 0, "dimension"),
    ("tensor_type", 99, 0, "unknown type 99"),
    ("tensor_offset", None, 3, "aligned"),
    ("tensor_offset", 2**40, 0, "past the end"),
    ("tensor_offset", 2**64 - 32, 0, "past the end"),
    ("string_length", 2**62, 0, "past the end"),
    ("array_count", 2**62, 0, "past the end"),
    ("array_type", 77, 0, "type 77"),
    ("value_type", 77, 0, "type 77"),
]


def _refusal(call, *args) -> str:
    with pytest.raises(MacllmError) as raised:
        call(*args)
    message = str(raised.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("kind, value, delta, expected", IMPOSSIBLE)
def test_impossible_gguf_header_is_refused_by_every_reader(tmp_path, tiny_llama_gguf, kind, value, delta, expected):
    crafted = with_field(tiny_llama_gguf, tmp_path / "crafted.gguf", kind, value, delta)
    for reader in (read_header, read_tokenizer, gguf_summary, read_model_files):
        assert expected in _refusal(reader, crafted), reader


@pytest.mark.parametrize("key, value", [
    ("block_count", 2**31),  # built layers without end
    ("block_count", 3),
    ("embedding_length", 2**31),  # internal error: OverflowError
    ("attention.head_count", 2**31),  # internal error: std::bad_cast
    ("attention.head_count", 5),  # internal error: a reshape deep in MLX
    ("vocab_size", 2**31),  # internal error: OverflowError
])
def test_sizes_that_do_not_fit_the_tensors_are_refused(tmp_path, tiny_llama_gguf, key, value):
    crafted = with_field(tiny_llama_gguf, tmp_path / "crafted.gguf", f"value:llama.{key}", value)
    message = _refusal(read_model_files, crafted)
    assert "crafted.gguf" in message and ("do not fit" in message or "layers" in message)


@pytest.mark.parametrize("alignment, expected", [(0, "alignment 0"), (3, "alignment 3"), (2**31, "alignment")])
def test_impossible_alignment_is_refused(tmp_path, aligned_gguf, alignment, expected):
    crafted = with_field(aligned_gguf, tmp_path / "crafted.gguf", "value:general.alignment", alignment)
    for reader in (read_header, read_model_files):
        assert expected in _refusal(reader, crafted)


def test_a_declared_alignment_is_honoured(aligned_gguf, tiny_llama_gguf):
    _, tensors = read_header(aligned_gguf)
    assert all(t.offset % 64 == 0 for t in tensors)
    _, weights, _, _ = read_model_files(aligned_gguf)  # MLX's reader must agree on where tensors start
    _, expected, _, _ = read_model_files(tiny_llama_gguf)
    assert sorted(weights) == sorted(expected)
    assert all(mx.array_equal(weights[name], expected[name]).item() for name in expected)


def test_every_field_of_a_valid_header_is_found(tiny_llama_gguf):
    """The fuzz tests rely on this walker finding the fields; a valid file must parse end to end."""
    data = tiny_llama_gguf.read_bytes()
    fields, end = gguf_fields(data)
    assert first(fields, "n_tensors").read(data) == len(read_header(tiny_llama_gguf)[1])
    assert end < len(data)


@pytest.mark.parametrize("version", [1, 4, 2**31])
def test_unknown_gguf_version_is_refused(tmp_path, tiny_llama_gguf, version):
    data = bytearray(tiny_llama_gguf.read_bytes())
    data[4:8] = version.to_bytes(4, "little")
    crafted = tmp_path / "crafted.gguf"
    crafted.write_bytes(bytes(data))
    assert "version" in _refusal(read_model_files, crafted)


# ---------------------------------------------------------------- safetensors


def crafted_folder(tiny_llama_folder, dest, **change):
    """The tiny model folder with the embedding's header entry changed."""
    folder = folder_copy(tiny_llama_folder, dest)
    header, body = safetensors_parts(folder / "model.safetensors")
    header["model.embed_tokens.weight"].update(change)
    write_safetensors(folder / "model.safetensors", header, body)
    return folder


def test_safetensors_shape_whose_size_overflows_is_refused(tmp_path, tiny_llama_folder):
    """MLX multiplied the shape in 64 bits: (2^32, 2^30) floats came to 0 bytes and loaded as (0, 2^30)."""
    folder = crafted_folder(tiny_llama_folder, tmp_path / "model", shape=[2**32, 2**30], data_offsets=[0, 0])
    message = _refusal(read_weights, folder)
    assert "model.safetensors" in message and "shape" in message


def test_safetensors_negative_dimension_is_one_line(tmp_path, tiny_llama_folder):
    """MLX allocated without end for a -1 dimension whose wrapped-around size matched the offsets."""
    folder = crafted_folder(tiny_llama_folder, tmp_path / "model", shape=[-1, 64], data_offsets=[0, 2**64 - 256])
    message = error_line(run_macllm(tmp_path / "home", "generate", "--model", folder, "-p", "hi", timeout=60))
    assert "model.safetensors" in message


@pytest.mark.parametrize("change, expected", [
    ({"shape": [True, 64]}, "shape"),
    ({"shape": [279, 64.0]}, "shape"),
    ({"dtype": "F64"}, "F64"),
    ({"data_offsets": [0, 2**70]}, "past the end"),
    ({"data_offsets": [8, 4]}, "offsets"),
])
def test_safetensors_entry_that_does_not_fit_is_refused(tmp_path, tiny_llama_folder, change, expected):
    folder = crafted_folder(tiny_llama_folder, tmp_path / "model", **change)
    assert expected in _refusal(read_weights, folder)


@pytest.mark.parametrize("header, length", [(b"{}", 2**62), (b"[1, 2]", None), (b"\xff{", None),
                                            (b'{"__metadata__": {"a": 1}}', None)])
def test_safetensors_header_that_is_not_a_header_is_refused(tmp_path, header, length):
    path = write_safetensors(tmp_path / "odd.safetensors", header, b"", length)
    with pytest.raises(ValueError):
        load_arrays(path)


def test_huggingface_cache_layout_is_inside(tmp_path, tiny_llama_folder):
    """A Hugging Face cache snapshot links its files to ../../blobs: still the model's own files."""
    repo = tmp_path / "models--org--tiny"
    snapshot = folder_copy(tiny_llama_folder, repo / "snapshots" / "abc123")
    (repo / "blobs").mkdir()
    blob = (snapshot / "model.safetensors").rename(repo / "blobs" / "f00d")
    (snapshot / "model.safetensors").symlink_to(Path("..") / ".." / "blobs" / blob.name)
    assert read_weights(snapshot)


def test_tensor_name_with_a_newline_stays_one_line(tmp_path, tiny_llama_folder):
    folder = folder_copy(tiny_llama_folder, tmp_path / "model")
    header, body = safetensors_parts(folder / "model.safetensors")
    header["model.extra\nmacllm: error: a second line"] = header["model.norm.weight"]  # an unexpected tensor
    write_safetensors(folder / "model.safetensors", header, body)
    assert "second line" in generate_error(tmp_path, folder)
