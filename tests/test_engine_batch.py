"""Batched decode (engine/batch.py): concurrent one-off requests share each forward pass and each gets exactly the
answer it would get alone; the oracle is the same engine generating one request at a time."""

from __future__ import annotations

import threading

import pytest

from macllm.engine import Engine, batch
from macllm.generation import GenerationParams, GenerationResult, TokenEvent
from macllm.lora.formats import write_adapter
from macllm.lora.random_adapter import random_adapter
from tests.server_helpers import write_talkative_folder


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MACLLM_HOME", str(tmp_path_factory.mktemp("batch-home")))
        folder = write_talkative_folder(tmp_path_factory.mktemp("batch-model") / "tiny-llama")
        with Engine(str(folder), progress=False) as e:
            cfg = e.loaded.config
            for seed, name in enumerate(("alpha", "beta")):
                adapter = random_adapter(cfg, name, rank=4, seed=seed + 1, b_std=0.5, base_model="tiny")
                e.load_adapter(str(write_adapter(adapter, tmp_path_factory.mktemp(name) / name, cfg.num_hidden_layers)))
            yield e


def prompt(engine, i: int) -> list[int]:
    tok = engine.tokenizer
    return tok.encode(tok.apply_chat_template([{"role": "user", "content": f"hello {i}"}]))


def alone(engine, tokens, params, adapters=None):
    engine.set_adapters(adapters or {})
    try:
        return engine.generate(tokens, params).result(timeout=60)
    finally:
        engine.set_adapters({})


def count_batched_steps(monkeypatch) -> list[int]:
    """The number of sequences in each decode forward the batch runs."""
    widths: list[int] = []
    real = batch.decode_forward

    def counting(model, tokens, caches):
        widths.append(len(caches))
        return real(model, tokens, caches)

    monkeypatch.setattr(batch, "decode_forward", counting)
    return widths


def all_at_once(engine, requests):
    """Queue every request while the engine thread is held, so they start together."""
    gate = threading.Event()
    engine.submit(gate.wait, 30)
    streams = [engine.complete(tokens, params, adapters) for tokens, params, adapters in requests]
    gate.set()
    return [s.result(timeout=120) for s in streams]


def test_concurrent_requests_decode_together_and_match_alone(engine, monkeypatch):
    widths = count_batched_steps(monkeypatch)
    params = [GenerationParams(max_tokens=n) for n in (20, 7, 30, 12, 25, 3)]
    params.append(GenerationParams(max_tokens=20, temperature=1.0, top_p=0.9, seed=5))
    params.append(GenerationParams(max_tokens=20, top_alternatives=3, stop_strings=("ass",)))
    requests = [(prompt(engine, i), p, {}) for i, p in enumerate(params)]
    results = all_at_once(engine, requests)
    assert max(widths) == len(requests)  # one forward carried every sequence
    for (tokens, p, _), got in zip(requests, results, strict=True):
        expected = alone(engine, tokens, p)
        assert got.token_ids == expected.token_ids
        assert got.text == expected.text and got.finish_reason == expected.finish_reason


def test_events_carry_logprobs_and_alternatives_as_alone(engine):
    tokens = prompt(engine, 3)
    p = GenerationParams(max_tokens=10, top_alternatives=4)
    gate = threading.Event()
    engine.submit(gate.wait, 30)
    streams = [engine.complete(tokens, p, {}), engine.complete(prompt(engine, 4), p, {})]
    gate.set()
    events = [e for e in streams[0] if isinstance(e, TokenEvent)]
    streams[1].result(timeout=60)
    expected = [e for e in engine.generate(tokens, p) if isinstance(e, TokenEvent)]
    assert [e.token_id for e in events] == [e.token_id for e in expected]
    for a, b in zip(events, expected, strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert [i for i, _ in sorted(a.alternatives)] == [i for i, _ in sorted(b.alternatives)]


def test_rows_under_one_blend_share_a_pass_and_blends_take_turns(engine, monkeypatch):
    passes: list[tuple[int, tuple]] = []
    real = batch.decode_forward

    def recording(model, tokens, caches):
        passes.append((len(caches), engine._active_blend()))
        return real(model, tokens, caches)

    monkeypatch.setattr(batch, "decode_forward", recording)
    blends = [{}, {"alpha": 1.0}, {"alpha": 1.0}, {"beta": 0.5}, {}, {"alpha": 1.0}]
    requests = [(prompt(engine, i), GenerationParams(max_tokens=15), b) for i, b in enumerate(blends)]
    results = all_at_once(engine, requests)
    for (tokens, p, blend), got in zip(requests, results, strict=True):
        assert got.token_ids == alone(engine, tokens, p, blend).token_ids, blend
    widest = {}
    for width, blend in passes:
        widest[blend] = max(widest.get(blend, 0), width)
    assert widest == {(): 2, (("alpha", 1.0),): 3, (("beta", 0.5),): 1}  # each pass ran one blend's rows
    assert len({blend for _, blend in passes[:3]}) == 3  # the blends take turns, step by step


def test_a_request_under_other_adapters_is_served_alongside_a_long_batch(engine, monkeypatch):
    monkeypatch.setattr(engine.loaded.tokenizer, "eos_token_ids", set())  # the base answers run all 300 tokens
    gate = threading.Event()
    engine.submit(gate.wait, 30)
    long = [engine.complete(prompt(engine, i), GenerationParams(max_tokens=300), {}) for i in range(2)]
    short = engine.complete(prompt(engine, 7), GenerationParams(max_tokens=10), {"alpha": 1.0})
    gate.set()
    short.result(timeout=60)
    assert not any(s.done for s in long)  # it did not wait for the base batch to finish
    for s in long:
        s.result(timeout=120)


def test_a_request_cancelled_mid_batch_stops_and_the_others_go_on(engine):
    gate = threading.Event()
    engine.submit(gate.wait, 30)
    long = [engine.complete(prompt(engine, i), GenerationParams(max_tokens=200), {}) for i in range(3)]
    gate.set()
    first = next(iter(long[1]))
    assert isinstance(first, TokenEvent)
    long[1].cancel()
    results = [s.result(timeout=120) for s in long]
    assert results[1].finish_reason == "cancelled"
    for i in (0, 2):
        assert results[i].token_ids == alone(engine, prompt(engine, i), GenerationParams(max_tokens=200)).token_ids


def test_the_next_request_reuses_a_finished_rows_cache(engine):
    tokens = prompt(engine, 5)
    first = engine.complete(tokens, GenerationParams(max_tokens=8), {}).result(timeout=60)
    follow = first.fed_tokens + engine.tokenizer.encode("<|im_end|>\n<|im_start|>user\nmore<|im_end|>\n")
    second = engine.complete(follow, GenerationParams(max_tokens=8), {}).result(timeout=60)
    assert second.stats.prompt_tokens - second.stats.prefilled_tokens >= len(first.fed_tokens)
    assert isinstance(second, GenerationResult)
    assert second.token_ids == alone(engine, follow, GenerationParams(max_tokens=8)).token_ids


def test_a_real_model_answers_alike_batched_and_alone(smollm_gguf):
    """SmolLM2's real weights: batched matmuls (several rows) against one-row ones must not change greedy answers."""
    questions = ["What is the capital of France?", "Name three colours.", "Count from one to five.",
                 "Say hello in Spanish."]
    with Engine(str(smollm_gguf), progress=False) as e:
        tok = e.tokenizer
        prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}])) for q in questions]
        params = GenerationParams(max_tokens=16)
        results = all_at_once(e, [(p, params, {}) for p in prompts])
        for p, got in zip(prompts, results, strict=True):
            assert got.token_ids == e.generate(p, params).result(timeout=300).token_ids


def test_a_model_that_cannot_batch_serves_one_request_at_a_time(tmp_path, monkeypatch):
    """Gemma 3's own body (sliding windows) does not split RowCaches: its requests go through the same runner one
    at a time, with the same answers."""
    from tests import tiny_gemma3

    widths = count_batched_steps(monkeypatch)
    with Engine(str(tiny_gemma3.write_folder(tmp_path / "tiny-gemma3")), progress=False) as e:
        prompts = [e.tokenizer.encode(f"hello {i}") for i in range(3)]
        params = GenerationParams(max_tokens=6)
        results = all_at_once(e, [(p, params, {}) for p in prompts])
        for p, got in zip(prompts, results, strict=True):
            assert got.token_ids == e.generate(p, params).result(timeout=60).token_ids
    assert widths and set(widths) == {1}


def test_running_rows_step_between_the_chunks_of_a_long_prompt(tmp_path, monkeypatch):
    from macllm.engine import PrefillProgress
    from macllm.generation import steps

    monkeypatch.setattr(steps, "PREFILL_CHUNK", 64)  # a 300-token prompt is prefilled in 5 chunks
    log: list[str] = []
    real = batch.decode_forward

    def logging_forward(model, tokens, caches):
        log.append("step")
        return real(model, tokens, caches)

    monkeypatch.setattr(batch, "decode_forward", logging_forward)
    folder = write_talkative_folder(tmp_path / "tiny-llama", context=2048)
    with Engine(str(folder), progress=False) as e:
        monkeypatch.setattr(e.loaded.tokenizer, "eos_token_ids", set())
        long_prompt = e.tokenizer.encode("hello world " * 200)[:300]
        params = GenerationParams(max_tokens=40)
        gate = threading.Event()
        e.submit(gate.wait, 30)
        running = e.complete(prompt(e, 0), params, {})
        joining = e.complete(long_prompt, params, {})
        real_put = joining._put

        def put(event):
            log.append(type(event).__name__)
            real_put(event)

        joining._put = put  # type: ignore[method-assign]
        gate.set()
        first, second = running.result(timeout=60), joining.result(timeout=60)
        assert second.token_ids == e.generate(long_prompt, params).result(timeout=60).token_ids
        assert first.token_ids == e.generate(prompt(e, 0), params).result(timeout=60).token_ids
    during = log[log.index(PrefillProgress.__name__):log.index("TokenEvent")]
    assert during.count("step") >= 4  # the running row went on between the joining prompt's chunks


@pytest.mark.parametrize("arch", ["olmo2", "lfm2"])
def test_an_mlx_lm_family_model_serves_concurrent_requests_one_at_a_time(arch, tmp_path, monkeypatch):
    """mlx-lm's own model classes (an attention family and a recurrent hybrid) take the server's path too: one
    sequence per pass with its own mlx-lm caches, answers as alone, the next turn reusing what it can."""
    from tests.test_mlx_lm_family import save_mlx_lm_folder

    monkeypatch.setenv("MACLLM_HOME", str(tmp_path / "home"))
    widths = count_batched_steps(monkeypatch)
    with Engine(str(save_mlx_lm_folder(arch, tmp_path / arch)), progress=False) as e:
        prompts = [[1, 5 + i, 9, 12, 7] for i in range(3)]
        params = GenerationParams(max_tokens=6)
        results = all_at_once(e, [(p, params, {}) for p in prompts])
        for p, got in zip(prompts, results, strict=True):
            assert got.token_ids == e.generate(p, params).result(timeout=60).token_ids
        follow = results[0].fed_tokens + [3, 4]
        again = e.complete(follow, params, {}).result(timeout=60)
        assert again.token_ids == e.generate(follow, params).result(timeout=60).token_ids
    assert widths and set(widths) == {1}
