"""Engine: one thread owns MLX; callers on other threads stream events, cancel, and chat in turns."""

from __future__ import annotations

import dataclasses
import threading

import mlx.core as mx
import numpy as np
import pytest

from macllm.cache.quantized import QuantizedKVCache
from macllm.engine import Engine, PrefillProgress
from macllm.errors import MacllmError
from macllm.generation import GenerationParams, GenerationResult, TokenEvent, steps
from macllm.loaded import ModelInfo
from macllm.lora.layers import LoRALinear
from tests.adapted_engine import engine_with_alpha_and_beta


@pytest.fixture(scope="module")
def engine(tiny_llama_gguf):
    e = Engine(str(tiny_llama_gguf), progress=False)
    yield e
    e.close()


def collect(stream):
    events = list(stream)
    return [e for e in events if isinstance(e, TokenEvent)], events[-1]


def test_generate_streams_events_then_result(engine):
    tokens, result = collect(engine.generate("hello world", GenerationParams(max_tokens=6)))
    assert isinstance(result, GenerationResult)
    assert [t.token_id for t in tokens] == result.token_ids


def test_all_mlx_work_happens_on_the_engine_thread(engine):
    names = engine.submit(lambda: threading.current_thread().name).result()
    assert names == "macllm-engine"


def test_streams_from_several_caller_threads(engine):
    results = {}

    def ask(i):
        results[i] = engine.generate("hello", GenerationParams(max_tokens=5)).result(timeout=60).token_ids

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and len({tuple(v) for v in results.values()}) == 1


def test_multi_turn_prefills_only_the_new_turn(engine):
    conv = engine.new_conversation(system="You are terse.")
    first = engine.chat(conv, "hello", GenerationParams(max_tokens=5)).result(timeout=60)
    turn1_tokens = first.stats.prompt_tokens
    assert first.stats.prefilled_tokens == turn1_tokens
    second = engine.chat(conv, "world", GenerationParams(max_tokens=5)).result(timeout=60)
    # Everything up to the first answer came from the KV cache, give or take the answer's re-tokenization.
    assert second.stats.prefilled_tokens < second.stats.prompt_tokens - turn1_tokens + 1
    assert second.stats.prefilled_tokens >= 1
    messages = engine.conversation(conv).messages
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]


def test_cached_turn_equals_fresh_conversation(engine):
    p = GenerationParams(max_tokens=6)
    conv = engine.new_conversation()
    engine.chat(conv, "hello", p).result(timeout=60)
    cached = engine.chat(conv, "user", p).result(timeout=60)
    fresh = engine.new_conversation()
    engine.set_messages(fresh, engine.conversation(conv).messages[:3])
    again = engine.reply(fresh, p).result(timeout=60)
    assert again.token_ids == cached.token_ids


def test_cancel_from_caller_thread(engine):
    stream = engine.generate("hello world", GenerationParams(max_tokens=400))
    count = 0
    produced_at_cancel = None
    for event in stream:
        if isinstance(event, TokenEvent):
            count += 1
            if count == 2:
                stream.cancel()
                # The engine runs ahead of this reader: count what it had produced when we cancelled.
                produced_at_cancel = count + stream._events.qsize()
        else:
            result = event
    assert result.finish_reason in ("cancelled", "stop")
    if result.finish_reason == "cancelled":
        # Still delivered: at most the token being handed over and the one step already in flight.
        assert len(result.token_ids) <= produced_at_cancel + 2


def test_errors_reach_the_caller_and_the_engine_survives(engine):
    with pytest.raises(MacllmError, match="longer than the model's context"):
        list(engine.generate("hello " * 600, GenerationParams(max_tokens=2)))
    assert engine.generate("hello", GenerationParams(max_tokens=2)).result(timeout=60).token_ids


def test_unknown_conversation(engine):
    stream = engine.chat("nope", "hi")  # queued: the error arrives with the stream
    with pytest.raises(MacllmError, match="no conversation"):
        stream.result(timeout=60)
    with pytest.raises(MacllmError, match="no conversation"):
        engine.conversation("nope")


def test_tokenize(engine):
    assert engine.tokenize("<|im_start|>hello")[0] == 1


# --- the one-thread rule: state changes are jobs, callers see copies ---------------------------
def test_conversation_jobs_run_in_order_and_views_are_copies(engine):
    conv = engine.new_conversation(system="be brief")  # queued; the chat below runs after it
    engine.chat(conv, "hello", GenerationParams(max_tokens=3)).result(timeout=60)
    view = engine.conversation(conv)
    view.messages.append({"role": "user", "content": "not sent"})
    assert len(engine.conversation(conv).messages) == 2
    assert engine.context_used(conv) == view.context_used > 0
    engine.set_messages(conv, view.messages[:1], system="be brief")
    assert [m["role"] for m in engine.conversation(conv).messages] == ["user"]
    engine.close_conversation(conv)
    assert conv not in engine.conversation_ids() and engine.context_used(conv) == 0


def test_context_used_never_waits_for_the_engine(engine):
    conv = engine.new_conversation()
    engine.chat(conv, "hello", GenerationParams(max_tokens=3)).result(timeout=60)
    release = threading.Event()
    blocked = engine.submit(release.wait, 30)  # the engine thread is busy until released
    try:
        assert engine.context_used(conv) > 0
        assert engine.info is not None and engine.info.context_length == 512
    finally:
        release.set()
    blocked.result(timeout=30)
    engine.close_conversation(conv)


def test_model_info_is_a_frozen_dataclass(engine):
    info = engine.info
    assert isinstance(info, ModelInfo) and info.architecture == "llama" and info.parameters > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.context_length = 1  # type: ignore[misc]


def test_kv_bits_are_an_engine_setting_that_drops_caches(engine):
    conv = engine.new_conversation()
    engine.chat(conv, "hello", GenerationParams(max_tokens=3)).result(timeout=60)
    engine.set_kv_bits(8).result(timeout=60)
    try:
        assert engine.kv_bits == 8 and engine.context_used(conv) == 0
        engine.chat(conv, "again", GenerationParams(max_tokens=3)).result(timeout=60)
        caches = engine.submit(lambda: engine._conversations[conv].cache).result()
        assert isinstance(caches[0], QuantizedKVCache)
        with pytest.raises(MacllmError, match="8 or 4"):
            engine.set_kv_bits(3)
    finally:
        engine.set_kv_bits(None).result(timeout=60)
        engine.close_conversation(conv)


def test_a_long_prefill_reports_progress_per_chunk(engine, monkeypatch):
    monkeypatch.setattr(steps, "PREFILL_CHUNK", 16)
    stream = engine.generate(list(range(1, 51)), GenerationParams(max_tokens=2))
    progress = [(e.done, e.total) for e in stream.with_progress() if isinstance(e, PrefillProgress)]
    assert progress == [(0, 50), (16, 50), (32, 50), (48, 50)]
    plain = list(engine.generate(list(range(1, 51)), GenerationParams(max_tokens=2)))
    assert not any(isinstance(e, PrefillProgress) for e in plain)  # plain iteration: tokens and the result


def test_a_closed_engine_refuses_work(tiny_llama_gguf):
    e = Engine(str(tiny_llama_gguf), progress=False)
    e.close()
    with pytest.raises(MacllmError, match="closed"):
        e.new_conversation()


# --- a failed adapter swap leaves the engine consistent -------------------------------------------
@pytest.fixture(scope="module")
def adapted(tiny_llama_folder, tmp_path_factory):
    with engine_with_alpha_and_beta(tiny_llama_folder, tmp_path_factory.mktemp("swap-adapters")) as e:
        yield e


def logits(engine) -> np.ndarray:
    return engine.submit(lambda: np.array(engine.loaded.model(mx.array([[1, 40, 50, 60]])))).result()


def test_a_swap_failing_part_way_restores_the_previous_set_and_drops_caches(adapted, monkeypatch):
    adapted.set_adapters({"alpha": 1.0})
    expected = logits(adapted)
    conv = adapted.new_conversation()
    adapted.chat(conv, "hello", GenerationParams(max_tokens=3)).result(timeout=60)
    assert adapted.context_used(conv) > 0

    real_activate, calls = LoRALinear.activate, []

    def fail_on_the_third_layer(self, scales):
        calls.append(scales)
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        real_activate(self, scales)

    monkeypatch.setattr(LoRALinear, "activate", fail_on_the_third_layer)
    with pytest.raises(RuntimeError, match="out of memory"):
        adapted.set_adapters({"beta": 1.0})
    monkeypatch.setattr(LoRALinear, "activate", real_activate)

    assert adapted.adapters["active"] == {"alpha": 1.0}
    assert adapted.context_used(conv) == 0  # no cache from a half-swapped model survives
    np.testing.assert_array_equal(logits(adapted), expected)  # every layer is back on alpha

    adapted.chat(conv, "again", GenerationParams(max_tokens=3)).result(timeout=60)
    with pytest.raises(MacllmError, match="not loaded"):  # a refusal changes nothing, caches included
        adapted.set_adapters({"gamma": 1.0})
    assert adapted.context_used(conv) > 0 and adapted.adapters["active"] == {"alpha": 1.0}
    adapted.close_conversation(conv)
