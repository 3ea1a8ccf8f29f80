"""Bad input gets one `macllm: error:` line that says what is wrong, exit code 2, and no traceback.

Each case runs the real command in a fresh process, so what a user sees is exactly what is checked.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests import tiny_models
from tests.test_cli import run_macllm


def error_line(done) -> str:
    """The single error line; fails the test on a traceback, a wrong exit code or extra output."""
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines()
             if line.strip() and not line.startswith("macllm: note:")]  # OpenBLAS hint on some machines
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("macllm: error: "), lines[0]
    return lines[0]


def generate_error(tmp_path, model, *args) -> str:
    return error_line(run_macllm(tmp_path / "home", "generate", "--model", model, *(args or ("-p", "hi"))))


def half_of(src: Path, dest: Path) -> Path:
    data = src.read_bytes()
    dest.write_bytes(data[: len(data) // 2])
    return dest


def folder_copy(src: Path, dest: Path) -> Path:
    return Path(shutil.copytree(src, dest))


# ---------------------------------------------------------------- model files


def test_missing_model_path(tmp_path):
    assert "not found" in generate_error(tmp_path, "/nope/x.gguf")


def test_text_file_named_gguf(tmp_path):
    fake = tmp_path / "x.gguf"
    fake.write_text("this is not a model\n")
    assert "not a GGUF file" in generate_error(tmp_path, fake)


def test_truncated_gguf(tmp_path, tiny_llama_gguf):
    cut = half_of(tiny_llama_gguf, tmp_path / "cut.gguf")
    message = generate_error(tmp_path, cut)
    assert "truncated" in message and "download it again" in message


def test_truncated_safetensors(tmp_path, tiny_llama_folder):
    folder = folder_copy(tiny_llama_folder, tmp_path / "model")
    half_of(tiny_llama_folder / "model.safetensors", folder / "model.safetensors")
    message = generate_error(tmp_path, folder)
    assert "model.safetensors" in message and "truncated" in message


def test_unknown_model_type(tmp_path, tiny_llama_folder):
    folder = folder_copy(tiny_llama_folder, tmp_path / "model")
    (folder / "config.json").write_text(json.dumps(tiny_models.hf_config("mamba9")))
    message = generate_error(tmp_path, folder)
    assert "mamba9" in message and "supported" in message


def test_unknown_gguf_architecture(tmp_path):
    gguf = tiny_models.write_tiny_gguf(tmp_path / "odd.gguf", arch="mamba9")
    assert "mamba9" in generate_error(tmp_path, gguf)


@pytest.mark.parametrize("text, expected", [
    ('{"model_type": ', "not valid JSON"),
    ("[1, 2]", "not a model config"),
])
def test_malformed_config_json(tmp_path, tiny_llama_folder, text, expected):
    folder = folder_copy(tiny_llama_folder, tmp_path / "model")
    (folder / "config.json").write_text(text)
    assert expected in generate_error(tmp_path, folder)


@pytest.mark.parametrize("change, expected", [
    ({"hidden_size": None}, "lacks hidden_size"),
    ({"num_attention_heads": "four"}, "num_attention_heads must be a positive integer"),
    ({"num_attention_heads": 0}, "num_attention_heads must be a positive integer"),
])
def test_config_with_unusable_sizes(tmp_path, tiny_llama_folder, change, expected):
    folder = folder_copy(tiny_llama_folder, tmp_path / "model")
    config = {k: v for k, v in {**tiny_models.hf_config(), **change}.items() if v is not None}
    (folder / "config.json").write_text(json.dumps(config))
    assert expected in generate_error(tmp_path, folder)


def test_gguf_whose_weights_do_not_fit_its_metadata(tmp_path, monkeypatch):
    import gguf

    declared = gguf.GGUFWriter.add_feed_forward_length
    monkeypatch.setattr(gguf.GGUFWriter, "add_feed_forward_length", lambda self, n: declared(self, n * 2))
    wrong = tiny_models.write_tiny_gguf(tmp_path / "wrong.gguf")
    monkeypatch.undo()
    message = generate_error(tmp_path, wrong)
    assert "do not fit" in message and "shape" in message


# ---------------------------------------------------------------- prompts and options


def test_prompt_longer_than_the_context(tmp_path, tiny_llama_gguf):
    long = tmp_path / "long.txt"
    long.write_text("hello world " * 600)  # ~1200 tokens; the tiny models hold 512
    message = generate_error(tmp_path, tiny_llama_gguf, "--prompt-file", long)
    assert "context" in message and "512" in message


def test_missing_prompt_file(tmp_path, tiny_llama_gguf):
    message = generate_error(tmp_path, tiny_llama_gguf, "--prompt-file", tmp_path / "absent.txt")
    assert "prompt file not found" in message


@pytest.mark.parametrize("option, value", [
    ("--top-p", "0"), ("--temp", "-1"), ("--temp", "nan"), ("--min-p", "1"), ("--top-k", "-2"),
    ("--repeat-penalty", "0"), ("--max-tokens", "0"),
])
def test_bad_sampling_value_names_the_option(tmp_path, tiny_llama_gguf, option, value):
    message = generate_error(tmp_path, tiny_llama_gguf, "-p", "hi", option, value)
    assert option in message


def test_option_of_the_wrong_type_is_one_line(tmp_path, tiny_llama_gguf):
    message = generate_error(tmp_path, tiny_llama_gguf, "-p", "hi", "--max-tokens", "many")
    assert "--max-tokens" in message and "--help" in message


def test_unknown_command_is_one_line(tmp_path):
    assert "bogus" in error_line(run_macllm(tmp_path, "bogus"))


# ---------------------------------------------------------------- catalog names


def test_unknown_model_name(tmp_path):
    message = generate_error(tmp_path, "no-such-model")
    assert "no-such-model" in message and "macllm models" in message


def test_pull_unknown_catalog_name(tmp_path):
    message = error_line(run_macllm(tmp_path, "pull", "no-such-model"))
    assert "no catalog model named no-such-model" in message


def test_gguf_with_a_tensor_type_not_supported_yet(tmp_path):
    import gguf
    import numpy as np

    from tests import tiny_models

    path = tmp_path / "q8k.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_token_list(tiny_models.tokenizer_metadata()["tokenizer.ggml.tokens"])
    # Q5_0 and the k-quants are imported now; Q8_K (llama.cpp's internal dot-product type) is not.
    q8k = gguf.GGMLQuantizationType.Q8_K
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((64, 292), np.uint8), raw_dtype=q8k)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert "uses GGUF type Q8_K, which macllm cannot import yet" in generate_error(tmp_path, path)


# ---------------------------------------------------------------- shard indexes (model.safetensors.index.json)


def sharded_copy(tiny_llama_folder: Path, dest: Path, weight_map) -> Path:
    """The tiny model with its weights in one shard that `weight_map` (any JSON) is said to describe."""
    folder = folder_copy(tiny_llama_folder, dest)
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


def all_in(shard: str) -> dict:
    from safetensors import safe_open

    with safe_open(Path(shard), "numpy") as f:
        return {name: Path(shard).name for name in f.keys()}


@pytest.mark.parametrize("escape", ["../outside.safetensors", "sub/../../outside.safetensors", "ABSOLUTE"])
def test_shard_index_may_not_name_a_file_outside_the_folder(tmp_path, tiny_llama_folder, escape):
    (tmp_path / "models").mkdir()
    outside = shutil.copy(tiny_llama_folder / "model.safetensors", tmp_path / "models" / "outside.safetensors")
    shard = str(outside) if escape == "ABSOLUTE" else escape
    weights = {name: shard for name in all_in(outside)}
    folder = sharded_copy(tiny_llama_folder, tmp_path / "models" / "model", weights)
    (folder / "sub").mkdir()  # so that sub/../../outside.safetensors exists too
    message = generate_error(tmp_path, folder)
    assert "outside" in message and "model.safetensors.index.json" in message


def test_shard_that_is_a_symlink_out_of_the_folder_is_refused(tmp_path, tiny_llama_folder):
    outside = shutil.copy(tiny_llama_folder / "model.safetensors", tmp_path / "outside.safetensors")
    weights = {name: "model-00001-of-00001.safetensors" for name in all_in(outside)}
    folder = sharded_copy(tiny_llama_folder, tmp_path / "models" / "model", weights)
    shard = folder / "model-00001-of-00001.safetensors"
    shard.unlink()
    shard.symlink_to(outside)
    assert "outside" in generate_error(tmp_path, folder)


@pytest.mark.parametrize("weight_map", [["model-00001-of-00001.safetensors"], "model.safetensors", None,
                                        {"model.norm.weight": 1}, {"model.norm.weight": ["a", "b"]}])
def test_shard_index_whose_weight_map_is_not_names_to_files(tmp_path, tiny_llama_folder, weight_map):
    folder = sharded_copy(tiny_llama_folder, tmp_path / "model", weight_map)
    message = generate_error(tmp_path, folder)
    assert "weight_map" in message and "download the model again" in message


@pytest.mark.parametrize("text", ["[1, 2]", '"weights"', "{", "\xff"])
def test_shard_index_that_is_not_a_json_object(tmp_path, tiny_llama_folder, text):
    folder = sharded_copy(tiny_llama_folder, tmp_path / "model", {})
    (folder / "model.safetensors.index.json").write_bytes(text.encode("latin-1"))
    assert "model.safetensors.index.json" in generate_error(tmp_path, folder)
