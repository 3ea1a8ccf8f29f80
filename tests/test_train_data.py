"""Notes folder -> training examples: what is skipped, chunk prefixes, code blocks, the split by file."""

from __future__ import annotations

import json

import pytest

from macllm.tokenizer import Tokenizer
from macllm.tuner.data import find_notes, load_data, split_files
from tests import tiny_models


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_gguf_metadata(tiny_models.tokenizer_metadata())


def test_skips_hidden_binary_and_ignored_files_and_counts_them(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "drafts").mkdir()
    (tmp_path / "a.md").write_text("# A\n\ntext")
    (tmp_path / "sub" / "b.txt").write_text("plain text")
    (tmp_path / ".git" / "c.md").write_text("# hidden")
    (tmp_path / "drafts" / "d.md").write_text("# draft")
    (tmp_path / "secret.md").write_text("# secret")
    (tmp_path / "photo.md").write_bytes(b"\x89PNG\x00\x01binary")
    (tmp_path / "data.bin").write_bytes(bytes(range(256)))
    (tmp_path / ".macllmignore").write_text("# comment\ndrafts/\nsecret.md\n")
    notes, skipped = find_notes(tmp_path)
    assert sorted(notes) == ["a.md", "sub/b.txt"]
    assert skipped["hidden"] == 1 and skipped["ignored"] == 2 and skipped["binary"] == 2


def test_chunks_carry_title_and_heading_path_and_keep_code_whole(tmp_path, tokenizer):
    code = "```python\n" + "\n".join(f"x{i} = {i}" for i in range(12)) + "\n```"
    body = "\n\n".join(f"Paragraph {i} " + "word " * 20 for i in range(6))
    (tmp_path / "guide.md").write_text(f"# Guide\n\n## Setup\n\n{body}\n\n{code}\n\n## Use\n\nrun it\n")
    data = load_data(tmp_path, tokenizer, max_seq=160, val_fraction=0, seed=0)
    texts = [tokenizer.decode(e.tokens, skip_special=True) for e in data.train]
    assert len(texts) > 2
    assert all(t.startswith("Guide") for t in texts)
    assert any(t.startswith("Guide > Setup\n\n") for t in texts)
    assert any(t.startswith("Guide > Use\n\nrun it") for t in texts)
    assert sum(code in t for t in texts) == 1  # the code block is in exactly one chunk, whole
    assert all(len(e.tokens) <= 160 for e in data.train)
    assert data.train[0].tokens[-1] == tokenizer.eos_token_id


def test_validation_holds_out_whole_files(tmp_path, tokenizer):
    for i in range(10):
        (tmp_path / f"n{i}.md").write_text(f"# N{i}\n\n" + "\n\n".join(f"part {j} of {i}" for j in range(5)))
    data = load_data(tmp_path, tokenizer, max_seq=64, val_fraction=0.2, seed=3)
    train_files = {e.source for e in data.train}
    valid_files = {e.source for e in data.valid}
    assert len(valid_files) == 2 and not train_files & valid_files
    assert data.stats["valid_file_names"] == sorted(valid_files)
    assert split_files(["a", "b"], 0.1, 0) == (["b"], ["a"]) or len(split_files(["a", "b"], 0.1, 0)[1]) == 1
    assert split_files(["only"], 0.5, 0) == (["only"], [])


def test_mlx_lm_data_folder_with_masked_prompts(tmp_path, tokenizer):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
            {"prompt": "say", "completion": "world"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "valid.jsonl").write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    data = load_data(tmp_path, tokenizer, max_seq=128, val_fraction=0.1, seed=0, mask_prompt=True)
    assert len(data.train) == 2 and len(data.valid) == 1
    chat = data.train[0]
    answer = tokenizer.decode(chat.tokens[chat.prompt_len:])
    assert answer.startswith("hello") and "hi" not in answer
    unmasked = load_data(tmp_path, tokenizer, max_seq=128, val_fraction=0.1, seed=0)
    assert all(e.prompt_len == 0 for e in unmasked.train)
