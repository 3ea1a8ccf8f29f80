"""The prompt cache through the Engine: a restart (a new Engine) resumes a conversation or a repeated prompt from
the file the first one saved, with the logits the first engine would have given; another adapter blend, KV
width or model misses; the app's bridge reopening a saved chat uses it. Tiny random models."""

from __future__ import annotations

from pathlib import Path

import pytest

from macllm.engine import Engine
from macllm.generation import GenerationParams, GenerationResult, TokenEvent
from macllm.lora.formats import write_adapter
from macllm.lora.random_adapter import random_adapter
from tests.test_bridge import FakeApp
from tui.bridge import EngineBridge
from tui.events import AnswerFinished

SYSTEM = "You answer questions about the harbour town. " * 8  # ~360 tokens on the tiny byte-level vocabulary
GREEDY = GenerationParams(max_tokens=4, temperature=0.0, top_alternatives=3)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MACLLM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def engine_for(model: Path, **kw) -> Engine:
    engine = Engine(str(model), progress=False, prompt_cache_mb=kw.pop("prompt_cache_mb", 64), **kw)
    engine.prompt_cache.min_tokens = 16  # the tiny model's context is 512
    return engine


def run(stream) -> tuple[GenerationResult, list[TokenEvent]]:
    events = list(stream)
    result = events[-1]
    assert isinstance(result, GenerationResult)
    return result, [e for e in events if isinstance(e, TokenEvent)]


def files(home: Path) -> list[Path]:
    return sorted((home / "cache").glob("*.safetensors"))


def test_a_new_engine_resumes_a_conversation_from_disk_with_the_same_logits(tiny_llama_folder, home):
    with engine_for(tiny_llama_folder) as first:
        conv = first.new_conversation(system=SYSTEM)
        turn1, _ = run(first.chat(conv, "Where is the pier?", GREEDY))
        assert turn1.stats.prefilled_tokens == turn1.stats.prompt_tokens  # nothing on disk yet
        assert len(files(home)) == 1  # saved after the long prefill
        messages = first.conversation(conv).messages
        first.prompt_cache.min_tokens = 10_000  # the next turn stays in memory only: the restart sees turn 1's file
        in_memory, in_memory_events = run(first.chat(conv, "And the bakery?", GREEDY))

    with engine_for(tiny_llama_folder) as second:  # the restart
        conv = second.new_conversation(system=SYSTEM, messages=messages)
        resumed, resumed_events = run(second.chat(conv, "And the bakery?", GREEDY))
    assert resumed.stats.prompt_tokens == in_memory.stats.prompt_tokens
    assert resumed.stats.prefilled_tokens == in_memory.stats.prefilled_tokens < 40  # only the new turn was read
    assert resumed.token_ids == in_memory.token_ids
    # Same cache, same computation: the log-probabilities and alternatives are identical, not merely close.
    assert [(e.logprob, e.alternatives) for e in resumed_events] == [(e.logprob, e.alternatives)
                                                                     for e in in_memory_events]


def test_a_repeated_prompt_in_a_new_engine_reads_only_what_is_new(tiny_llama_folder):
    prompt = SYSTEM + "Question: where is the pier?"
    with engine_for(tiny_llama_folder) as first:
        run(first.generate(prompt, GREEDY))
    with engine_for(tiny_llama_folder) as second:
        again, _ = run(second.generate(SYSTEM + "Question: when does the bakery open?", GREEDY))
    assert again.stats.prefilled_tokens < 40 < again.stats.prompt_tokens


def test_closing_a_conversation_saves_what_it_grew_by(tiny_llama_folder, home):
    with engine_for(tiny_llama_folder) as first:
        conv = first.new_conversation(system=SYSTEM)
        run(first.chat(conv, "Where is the pier?", GREEDY))
        saved = files(home)
        run(first.chat(conv, "Tell me about the storm of 1987 and the new concrete pier. " * 2, GREEDY))
        first.close_conversation(conv).result()
        after = files(home)
    assert len(after) == 1 and after != saved  # the longer file replaced the shorter one it extends


@pytest.fixture(scope="module")
def adapter_folder(tiny_llama_folder, tmp_path_factory) -> Path:
    with Engine(str(tiny_llama_folder), progress=False, prompt_cache_mb=0) as e:
        cfg = e.loaded.config
        adapter = random_adapter(cfg, "pirate", rank=4, seed=1, b_std=0.5, base_model="tiny")
        return write_adapter(adapter, tmp_path_factory.mktemp("adapters") / "pirate", cfg.num_hidden_layers)


@pytest.mark.parametrize("change", ["adapter", "adapter-weight", "kv-bits", "model"])
def test_a_file_from_another_blend_kv_width_or_model_is_not_used(change, tiny_llama_folder, tiny_qwen2_folder,
                                                                adapter_folder):
    prompt = SYSTEM + "Question: where is the pier?"
    with engine_for(tiny_llama_folder) as first:
        if change == "adapter-weight":
            first.load_adapter(str(adapter_folder))
            first.set_adapters({"pirate": 1.0})
        run(first.generate(prompt, GREEDY))
    model = tiny_qwen2_folder if change == "model" else tiny_llama_folder
    with engine_for(model, kv_bits=8 if change == "kv-bits" else None) as second:
        if change.startswith("adapter"):
            second.load_adapter(str(adapter_folder))
            second.set_adapters({"pirate": 0.5 if change == "adapter-weight" else 1.0})
        again, _ = run(second.generate(prompt, GREEDY))
    assert again.stats.prefilled_tokens == again.stats.prompt_tokens


def test_the_app_reopening_a_saved_chat_starts_from_the_file(tiny_llama_folder, home):
    messages = [{"role": "user", "content": "Where is the pier?"}]
    params = GenerationParams(max_tokens=4, temperature=0.0)

    def answer(messages: list[dict]) -> GenerationResult:
        app = FakeApp()
        bridge = EngineBridge(app, engine_for(tiny_llama_folder))
        try:
            bridge.answer("chat-1", SYSTEM, messages, params)
            app.wait()
            (finished,) = [m for m in app.messages if isinstance(m, AnswerFinished)]
            return finished.result
        finally:
            bridge.shutdown()  # the app's exit: the engine saves its conversations

    first = answer(messages)
    assert first.stats.prefilled_tokens == first.stats.prompt_tokens
    reopened = answer(messages + [{"role": "assistant", "content": first.text},
                                  {"role": "user", "content": "And the bakery?"}])
    assert reopened.stats.prefilled_tokens < 40 < reopened.stats.prompt_tokens


def test_a_speculative_draft_resumes_its_own_cache_from_disk(tmp_path, home, monkeypatch):
    from macllm.generation import speculative
    from tests.test_speculative_engine import write_shaken

    target = write_shaken(tmp_path / "target", (0.3, 7))
    draft = write_shaken(tmp_path / "draft", (0.3, 7), (0.02, 1))
    params = GenerationParams(max_tokens=6, temperature=0.0, draft_model=str(draft))
    draft_reads: list[int] = []
    real_prefill = speculative.prefill

    def counted(model, tokens, cache, *args):
        draft_reads.append(len(tokens))
        return real_prefill(model, tokens, cache, *args)

    monkeypatch.setattr(speculative, "prefill", counted)
    prompt = SYSTEM + "Question: where is the pier?"
    with engine_for(target) as first:
        before, _ = run(first.generate(prompt, params))
    assert len(files(home)) == 2  # the model's cache and the draft's, each under its own key
    assert draft_reads == [before.stats.prompt_tokens]
    draft_reads.clear()
    with engine_for(target) as second:
        again, _ = run(second.generate(prompt, params))
    assert again.stats.prefilled_tokens == 1 and draft_reads in ([], [1])  # both read at most the last token
    assert again.token_ids == before.token_ids


def test_the_servers_completions_resume_from_disk_after_a_restart(tiny_llama_folder):
    """`Engine.complete` is what `macllm serve` runs for every request."""
    with engine_for(tiny_llama_folder) as first:
        tokens = first.tokenize(SYSTEM + "Question: where is the pier?")
        before, _ = run(first.complete(tokens, GREEDY, {}))
    with engine_for(tiny_llama_folder) as second:
        again, _ = run(second.complete(tokens + second.tokenize(" And the bakery?"), GREEDY, {}))
    assert before.stats.prefilled_tokens == len(tokens)
    assert again.stats.prefilled_tokens < 20 < again.stats.prompt_tokens


def test_a_deleted_chat_leaves_no_prompt_cache_behind(tiny_llama_folder, home):
    messages = [{"role": "user", "content": "Where is the pier?"}]
    app = FakeApp()
    bridge = EngineBridge(app, engine_for(tiny_llama_folder))
    try:
        bridge.answer("chat-1", SYSTEM, messages, GenerationParams(max_tokens=4, temperature=0.0))
        app.wait()
        (finished,) = [m for m in app.messages if isinstance(m, AnswerFinished)]
        assert len(files(home)) == 1
        history = messages + [{"role": "assistant", "content": finished.result.text}]
        bridge.forget("chat-1", SYSTEM, history)  # what the chat screen does on F8
        bridge.engine.submit(lambda: None).result()  # after the queued jobs
        assert files(home) == []
    finally:
        bridge.shutdown()
    assert files(home) == []  # and the closed conversation was not saved again at exit
