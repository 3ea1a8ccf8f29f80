"""Engine: one thread owns MLX; callers on other threads stream events, cancel, and chat in turns."""

from __future__ import annotations

import threading

import pytest

from macllm.engine import Engine
from macllm.errors import MacllmError
from macllm.generation import GenerationParams, GenerationResult, TokenEvent


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
