"""Speculative decoding through the Engine: the draft named in GenerationParams is loaded on the engine thread
and kept, conversations keep its cache between turns, answers equal plain ones (with adapters, and across a
swap), prompt lookup works from a parameter, and a draft with another vocabulary is refused in one line."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from macllm.engine import Engine
from macllm.errors import MacllmError
from macllm.generation import GenerationParams, GenerationResult, TokenEvent, speculative
from tests import tiny_models
from tests.adapted_engine import engine_with_alpha_and_beta


def write_shaken(folder: Path, *noise: tuple[float, int]) -> Path:
    """The tiny folder with noise (scale, seed) on every weight: 0.3 makes a lively model (the tiny one repeats
    a single token greedily), a further 0.02 a draft that agrees with it about half the time."""
    tiny_models.write_tiny_folder(folder)
    weights = mx.load(str(folder / "model.safetensors"))
    for scale, seed in noise:
        rng = np.random.default_rng(seed)
        weights = {k: v + mx.array(rng.standard_normal(v.shape).astype(np.float32)) * scale
                   for k, v in sorted(weights.items())}
    mx.save_safetensors(str(folder / "model.safetensors"), weights)
    return folder


@pytest.fixture(scope="module")
def target_folder(tmp_path_factory) -> Path:
    return write_shaken(tmp_path_factory.mktemp("spec-target") / "target", (0.3, 7))


@pytest.fixture(scope="module")
def draft_folder(tmp_path_factory) -> Path:
    return write_shaken(tmp_path_factory.mktemp("spec-draft") / "draft", (0.3, 7), (0.02, 1))


@pytest.fixture(scope="module")
def engine(target_folder, tmp_path_factory):
    with engine_with_alpha_and_beta(target_folder, tmp_path_factory.mktemp("spec-adapters")) as e:
        yield e


def answer(stream) -> GenerationResult:
    result = None
    for event in stream:
        if isinstance(event, GenerationResult):
            result = event
    assert result is not None
    return result


def turns(engine: Engine, params: GenerationParams, texts=("hello world", "user assistant hello")) -> list:
    conv = engine.new_conversation(system="be brief")
    results = [answer(engine.chat(conv, text, params)) for text in texts]
    engine.close_conversation(conv)
    return results


def test_chat_with_a_draft_equals_plain_chat_turn_by_turn(engine, draft_folder):
    engine.set_adapters({})
    plain = turns(engine, GenerationParams(max_tokens=30))
    fast = turns(engine, GenerationParams(max_tokens=30, draft_model=str(draft_folder)))
    assert [r.token_ids for r in fast] == [r.token_ids for r in plain]
    assert [r.text for r in fast] == [r.text for r in plain]
    assert all(0 < r.stats.draft_accepted < r.stats.draft_proposed for r in fast)
    assert fast[1].stats.prefilled_tokens < fast[1].stats.prompt_tokens  # the second turn reused the cache
    assert engine.draft_info is not None and engine.draft_info.source == str(draft_folder)


def test_the_draft_runs_bare_while_the_model_has_its_blend(engine, draft_folder):
    fast_params = GenerationParams(max_tokens=30, draft_model=str(draft_folder))
    engine.set_adapters({"alpha": 1.0, "beta": 0.5})
    blended = turns(engine, GenerationParams(max_tokens=30))
    fast = turns(engine, fast_params)
    assert [r.token_ids for r in fast] == [r.token_ids for r in blended]
    engine.set_adapters({})
    assert turns(engine, GenerationParams(max_tokens=30))[0].token_ids != blended[0].token_ids  # it mattered


def test_a_swap_asked_for_mid_answer_applies_exactly_after_it(engine, draft_folder):
    params = GenerationParams(max_tokens=40, draft_model=str(draft_folder))
    engine.set_adapters({"alpha": 1.0})
    conv = engine.new_conversation()
    stream = engine.chat(conv, "hello world", params)
    events = iter(stream)
    assert isinstance(next(events), TokenEvent)
    swapper = threading.Thread(target=engine.set_adapters, args=({"beta": 1.0},))
    swapper.start()  # queued behind the answer: every token of it is alpha's
    first = answer(events)
    swapper.join()
    second = answer(engine.chat(conv, "user hello", params))
    # The same two turns without a draft, swapping between them.
    engine.set_adapters({"alpha": 1.0})
    plain = engine.new_conversation()
    plain_first = answer(engine.chat(plain, "hello world", GenerationParams(max_tokens=40)))
    engine.set_adapters({"beta": 1.0})
    plain_second = answer(engine.chat(plain, "user hello", GenerationParams(max_tokens=40)))
    assert first.token_ids == plain_first.token_ids and second.token_ids == plain_second.token_ids
    engine.set_adapters({})


def test_prompt_lookup_through_the_engine(engine, monkeypatch):
    asked = []
    propose = speculative.LookupProposer.propose
    monkeypatch.setattr(speculative.LookupProposer, "propose",
                        lambda self, history, plan, room: asked.append(room) or propose(self, history, plan, room))
    engine.set_adapters({})
    prompt = "hello world user hello world user hello world"
    plain = answer(engine.generate(prompt, GenerationParams(max_tokens=40)))
    assert not asked
    looked = answer(engine.generate(prompt, GenerationParams(max_tokens=40, prompt_lookup=True)))
    assert looked.token_ids == plain.token_ids
    assert len(asked) == len(looked.token_ids) - 1 - looked.stats.draft_accepted  # one guess per round


def test_a_draft_with_another_vocabulary_is_refused_in_one_line(engine, draft_folder, tmp_path):
    other = tmp_path / "other-vocab"
    shutil.copytree(draft_folder, other)
    spec = json.loads((other / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    a, b = "hello", "Ġworld"
    vocab[a], vocab[b] = vocab[b], vocab[a]  # same size, two tokens trade ids
    (other / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(MacllmError) as refused:
        engine.load_draft(str(other)).result()
    message = str(refused.value)
    assert "another vocabulary" in message and "\n" not in message
    with pytest.raises(MacllmError, match="another vocabulary"):
        answer(engine.generate("hello", GenerationParams(max_tokens=5, draft_model=str(other))))
    # The engine goes on, with or without a draft.
    assert answer(engine.generate("hello", GenerationParams(max_tokens=5, draft_model=str(draft_folder))))
    engine.drop_draft().result()
    assert engine.draft_info is None


def test_batched_requests_decode_plainly_and_still_match(engine):
    """The server's concurrent requests share each forward pass (engine/batch.py); there guesses are not made."""
    engine.set_adapters({})
    prompts = [engine.tokenize("hello world user hello world"), engine.tokenize("user hello user hello")]
    params = GenerationParams(max_tokens=20, prompt_lookup=True)
    gate = threading.Event()
    engine.submit(gate.wait, 30)  # both requests queue while the engine thread is held, then run together
    streams = [engine.complete(p, params) for p in prompts]
    gate.set()
    for p, stream in zip(prompts, streams, strict=True):
        got = stream.result(timeout=120)
        assert got.token_ids == answer(engine.generate(p, GenerationParams(max_tokens=20))).token_ids
        assert got.stats.draft_proposed == 0
