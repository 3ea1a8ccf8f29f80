"""EngineBridge without a screen: what it posts for a notes answer (prefill progress, the context it used)
and what it records when an adapter swap fails."""

from __future__ import annotations

import threading

import pytest

from macllm.engine import Engine
from macllm.generation import GenerationParams, steps
from tests.notes_fixture import notes_retriever
from tui.bridge import EngineBridge
from tui.events import AdaptersFailed, AnswerFinished, AnswerPrefill, AnswerSources, AnswerToken


class FakeApp:
    """Collects posted messages; runs each worker on a thread the test waits for."""

    def __init__(self):
        self.messages: list = []
        self.workers: list[threading.Thread] = []

    def post_message(self, message) -> None:
        self.messages.append(message)

    def run_worker(self, fn, **_) -> None:
        thread = threading.Thread(target=fn)
        thread.start()
        self.workers.append(thread)

    def wait(self) -> None:
        for thread in self.workers:
            thread.join(timeout=60)


@pytest.fixture
def bridge(tiny_llama_folder, tmp_path):
    app = FakeApp()
    engine = Engine(str(tiny_llama_folder), progress=False)
    b = EngineBridge(app, engine)
    b._retrievers["notes"] = notes_retriever(engine, tmp_path)
    yield b
    b.shutdown()


def test_a_notes_answer_posts_prefill_progress_and_its_context(bridge, monkeypatch):
    monkeypatch.setattr(steps, "PREFILL_CHUNK", 16)  # the tiny model's prompts span several chunks
    app = bridge.app
    answer_id = bridge.ask_notes("what do cats eat?", "notes", GenerationParams(max_tokens=3), app, chat_id="c1")
    app.wait()
    kinds = [type(m) for m in app.messages if getattr(m, "answer_id", None) == answer_id]
    assert kinds[0] is AnswerSources and kinds[1] is AnswerPrefill and kinds[-1] is AnswerFinished
    assert kinds.index(AnswerToken) > max(i for i, k in enumerate(kinds) if k is AnswerPrefill)
    finished = app.messages[-1].result
    assert bridge.context_used("c1") == len(finished.fed_tokens) > 0  # not 0: the answer's own context
    assert bridge.engine.conversation_ids() == []  # and it kept no conversation


def test_a_failed_reload_records_the_adapters_really_active(bridge, tmp_path):
    from macllm.lora.formats import write_adapter
    from macllm.lora.random_adapter import random_adapter

    engine, app = bridge.engine, bridge.app
    folder = write_adapter(random_adapter(engine.loaded.config, "a", rank=2), tmp_path / "a", 2)
    bridge.apply_adapters({"a": 1.0}, refs={"a": str(folder)})
    app.wait()
    assert bridge.active_adapters == {"a": 1.0}
    (folder / "adapters.safetensors").unlink()  # the reload unloads "a", then cannot read it again
    bridge.apply_adapters({"a": 1.0}, reload=("a",), refs={"a": str(folder)})
    app.wait()
    assert isinstance(app.messages[-1], AdaptersFailed)
    assert bridge.active_adapters == engine.adapters["active"] == {}
