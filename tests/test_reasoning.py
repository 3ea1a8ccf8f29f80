"""Reasoning models: the <think> splitter over streamed text, the split through generation, the engine's
history and `generate --json`, on a tiny model scripted to think."""

from __future__ import annotations

import json
import random
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from tokenizers import AddedToken

from macllm.generation import GenerationParams, GenerationResult, TokenEvent
from macllm.generation.reasoning import ReasoningSplitter, prompt_opens_thinking, template_thinks
from macllm.tokenizer import Tokenizer
from tests import tiny_models

# ChatML plus Qwen3's switch: thinking is the default; enable_thinking=false closes an empty block for the model.
THINKING_TEMPLATE = tiny_models.CHATML.replace(
    "{{ '<|im_start|>assistant\n' }}",
    "{{ '<|im_start|>assistant\n' }}{% if enable_thinking is defined and enable_thinking is false %}"
    "{{ '<think>\n\n</think>\n\n' }}{% endif %}")
# What the scripted model answers after any prompt ending in a newline: each token's successor.
SCRIPT = ("Ċ", "<think>", "hello", "</think>", "Ġworld", "<|im_end|>")


def split_all(text: str, sizes: list[int], inside: bool = False) -> tuple[str, str]:
    splitter, reasoning, answer, at = ReasoningSplitter(inside), "", "", 0
    for size in sizes:
        piece = splitter.feed(text[at:at + size])
        reasoning, answer, at = reasoning + piece.reasoning, answer + piece.answer, at + size
        assert "<think>" not in piece.reasoning + piece.answer and "</think>" not in piece.reasoning + piece.answer
    for piece in (splitter.feed(text[at:]), splitter.flush()):
        reasoning, answer = reasoning + piece.reasoning, answer + piece.answer
    return reasoning, answer


CASES = [
    ("<think>\nStep one.\n\nStep two.\n</think>\n\nThe answer is 4.\n", "Step one.\n\nStep two.",
     "The answer is 4.\n"),
    ("<think>\n\n</think>\n\nNo thinking here.", "", "No thinking here."),
    ("  \n<think>思考 🤔 </th> 不是结束</think>答案 😀", "思考 🤔 </th> 不是结束", "答案 😀"),
    ("Plain answer with <think> in the middle", "", "Plain answer with <think> in the middle"),
    ("<think>\nran out of tokens while thinking\n\n", "ran out of tokens while thinking", ""),
    ("<thin", "", "<thin"),
    ("", "", ""),
]


@pytest.mark.parametrize(("text", "reasoning", "answer"), CASES)
def test_splitter_gives_the_same_parts_however_the_text_is_streamed(text, reasoning, answer):
    assert split_all(text, []) == (reasoning, answer)
    assert split_all(text, [1] * len(text)) == (reasoning, answer)
    for seed in range(30):
        rnd = random.Random(seed)
        assert split_all(text, [rnd.randint(1, 5) for _ in range(len(text))]) == (reasoning, answer), seed


def test_splitter_started_inside_a_block_the_prompt_opened():
    assert prompt_opens_thinking("<|im_start|>assistant\n<think>\n")
    assert not prompt_opens_thinking("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert split_all("\nweighing options\n</think>\n\nDone.", [2] * 20, inside=True) == ("weighing options", "Done.")


def test_templates_that_know_think_blocks():
    assert template_thinks(THINKING_TEMPLATE)
    assert not template_thinks(tiny_models.CHATML) and not template_thinks(None)


# ------------------------------------------------------------------ a tiny model scripted to think


def write_thinking_folder(folder: Path) -> Path:
    """A tiny llama whose tokenizer has <think> and </think> and whose greedy answer is SCRIPT.

    The tiny model's output is dominated by the embedding of its last token (tied, it echoes it); an lm_head
    whose row for each token's successor is that token's embedding makes greedy decoding follow SCRIPT."""
    folder.mkdir(parents=True)
    tiny_models.write_tokenizer_files(folder)
    hf = Tokenizer.from_folder(folder).hf_tokenizer
    hf.add_tokens([AddedToken("<think>", special=False, normalized=False),
                   AddedToken("</think>", special=False, normalized=False)])
    hf.save(str(folder / "tokenizer.json"))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": THINKING_TEMPLATE}))
    vocab = hf.get_vocab_size(with_added_tokens=True)

    weights = tiny_models.random_weights(seed=3)
    embed = weights["model.embed_tokens.weight"]
    embed = np.concatenate([embed, np.random.default_rng(4).standard_normal((2, embed.shape[1]), np.float32) * 0.5])
    successor = list(range(vocab))
    ids = [hf.token_to_id(t) for t in SCRIPT]
    for here, there in zip(ids, ids[1:] + ids[:1], strict=True):  # a cycle, so the rows stay a permutation
        successor[here] = there
    head = np.zeros_like(embed)
    head[successor] = embed
    weights.update({"model.embed_tokens.weight": embed, "lm_head.weight": head})
    config = tiny_models.hf_config(tied=False, vocab_size=vocab)
    (folder / "config.json").write_text(json.dumps(config))
    mx.save_safetensors(str(folder / "model.safetensors"), {k: mx.array(v) for k, v in weights.items()})
    return folder


@pytest.fixture(scope="module")
def thinking_folder(tmp_path_factory) -> Path:
    return write_thinking_folder(tmp_path_factory.mktemp("thinking") / "tiny-thinker")


def test_generate_json_splits_reasoning_and_text(cli, thinking_folder):
    code, out, err = cli("generate", "--model", thinking_folder, "--chat", "-p", "hi", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert (result["reasoning"], result["text"], result["finish_reason"]) == ("hello", " world", "stop")


def test_generate_streams_the_answer_to_stdout_and_the_thinking_to_stderr(cli, thinking_folder):
    code, out, err = cli("generate", "--model", thinking_folder, "--chat", "-p", "hi", "--no-think")
    assert code == 0, err
    assert out.startswith(" world") and "hello" not in out
    assert err.startswith("hello")


def test_think_switch_reaches_the_template(thinking_folder):
    from macllm.engine import Engine

    with Engine(str(thinking_folder), progress=False) as engine:
        prompts = {}
        for switch in (None, True, False):
            conv = engine.new_conversation()
            stream = engine.chat(conv, "hi", GenerationParams(max_tokens=8, enable_thinking=switch))
            events = list(stream)
            prompts[switch] = engine.tokenizer.decode(events[-1].fed_tokens[:events[-1].stats.prompt_tokens])
            tokens = [e for e in events if isinstance(e, TokenEvent)]
            assert "".join(e.reasoning for e in tokens) == "hello"
            assert "".join(e.text for e in tokens) == " world"
            view = engine.conversation(conv)
            assert view.messages[-1] == {"role": "assistant", "content": " world", "reasoning_content": "hello",
                                         "finish_reason": "stop"}
        assert prompts[None] == prompts[True] and prompts[False] == prompts[None] + "<think>\n\n</think>\n\n"


def test_the_next_turn_sends_thinking_back_as_the_template_says(thinking_folder):
    from macllm.engine import Engine

    with Engine(str(thinking_folder), progress=False) as engine:
        conv = engine.new_conversation()
        first = engine.chat(conv, "hi", GenerationParams(max_tokens=8)).result()
        assert isinstance(first, GenerationResult) and first.reasoning == "hello"
        second = engine.chat(conv, "again", GenerationParams(max_tokens=8)).result()
        prompt = engine.tokenizer.decode(second.fed_tokens[:second.stats.prompt_tokens])
        # This ChatML-style template knows no reasoning_content: it renders the answer alone.
        assert "<|im_start|>assistant\n world<|im_end|>" in prompt and "hello" not in prompt
