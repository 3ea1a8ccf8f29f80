"""The engine's one-thread rule under load: many threads swap and blend adapters, start, send to and close
chats and ask the notes at once, for a bounded time. Only MacllmErrors (a chat closed by another thread)
may surface, and at the end the engine holds exactly the conversations nobody closed, each well formed."""

from __future__ import annotations

import random
import sys
import threading
import time

import pytest

from macllm.engine import Engine
from macllm.errors import MacllmError
from macllm.generation import GenerationParams
from macllm.lora.formats import write_adapter
from macllm.lora.random_adapter import random_adapter
from macllm.rag.answer import ask
from tests.notes_fixture import QUESTIONS, notes_retriever

SECONDS = 4.0
MAX_ROUNDS = 200  # per thread: bounds the run on a slow machine too
SHORT = GenerationParams(max_tokens=3)
ADAPTERS = ("red", "green", "blue")


@pytest.fixture(scope="module")
def engine(tiny_llama_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("threads")
    with Engine(str(tiny_llama_folder), progress=False) as e:
        cfg = e.loaded.config
        for seed, name in enumerate(ADAPTERS):
            adapter = random_adapter(cfg, name, rank=4, seed=seed + 1, b_std=0.2, base_model="tiny")
            e.load_adapter(str(write_adapter(adapter, root / name, cfg.num_hidden_layers)))
        e.retriever = notes_retriever(e, root)
        yield e


@pytest.fixture
def busy_switching():
    """Switch threads every few microseconds so unguarded shared state is caught mid-change."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(old)


class Hammer:
    def __init__(self, engine: Engine, seed: int):
        self.engine = engine
        self.deadline = time.monotonic() + SECONDS
        self.errors: list[BaseException] = []
        self.expected = 0  # MacllmErrors, e.g. sending to a chat another thread closed
        self.lock = threading.Lock()
        self.open: set[str] = set()  # conversations nobody has closed
        self.seed = seed

    def run(self, name: str, action) -> threading.Thread:
        rng = random.Random(f"{self.seed}-{name}")

        def loop() -> None:
            for _ in range(MAX_ROUNDS):
                if time.monotonic() > self.deadline:
                    return
                try:
                    action(rng)
                except MacllmError:
                    with self.lock:
                        self.expected += 1
                except BaseException as e:  # noqa: B036  (whatever it is, the test reports it)
                    with self.lock:
                        self.errors.append(e)

        thread = threading.Thread(target=loop, name=name, daemon=True)
        thread.start()
        return thread

    # --- the actions ------------------------------------------------------------------------
    def swap(self, rng: random.Random) -> None:
        names = rng.sample(ADAPTERS, rng.randint(0, len(ADAPTERS)))
        self.engine.set_adapters({n: round(rng.uniform(0.2, 1.5), 2) for n in names})  # 2+: a blend

    def chat(self, rng: random.Random) -> None:
        conv = self.engine.new_conversation(system="be brief" if rng.random() < 0.5 else None)
        with self.lock:
            self.open.add(conv)
        for turn in range(rng.randint(1, 3)):
            self.engine.chat(conv, f"turn {turn}", SHORT).result(timeout=60)
        if rng.random() < 0.3:  # an edit: keep the first exchange, answer again
            self.engine.set_messages(conv, self.engine.conversation(conv).messages[:1])
            self.engine.reply(conv, SHORT).result(timeout=60)
        if rng.random() < 0.7:
            self.close(conv)

    def churn(self, rng: random.Random) -> None:
        """Many chats opened, then closed: the table of conversations is large and changes all the time."""
        opened = [self.engine.new_conversation() for _ in range(rng.randint(20, 100))]
        for conv in opened:
            self.engine.close_conversation(conv)

    def close_someone_elses(self, rng: random.Random) -> None:
        with self.lock:
            victims = sorted(self.open)
        if victims:
            self.close(rng.choice(victims))
        time.sleep(0.005)

    def close(self, conv: str) -> None:
        with self.lock:
            self.open.discard(conv)
        self.engine.close_conversation(conv)

    def ask_notes(self, rng: random.Random) -> None:
        answer = ask(self.engine, self.engine.retriever, rng.choice(QUESTIONS), k=2, params=SHORT)
        assert answer.stream.result(timeout=60).token_ids

    def kv_bits(self, rng: random.Random) -> None:
        self.engine.set_kv_bits(rng.choice((None, 8))).result(timeout=60)
        time.sleep(0.01)


def test_public_api_from_many_threads_keeps_the_engine_consistent(engine, busy_switching):
    hammer = Hammer(engine, seed=0)
    threads = [hammer.run("swap", hammer.swap), hammer.run("chat-1", hammer.chat), hammer.run("chat-2", hammer.chat),
               hammer.run("closer", hammer.close_someone_elses), hammer.run("notes", hammer.ask_notes),
               hammer.run("kv-bits", hammer.kv_bits), hammer.run("churn", hammer.churn)]
    for thread in threads:
        thread.join(timeout=SECONDS + 120)
    assert not any(t.is_alive() for t in threads), "a thread is stuck"
    assert not hammer.errors, f"{len(hammer.errors)} unexpected error(s), first: {hammer.errors[0]!r}"

    assert set(engine.conversation_ids()) == hammer.open  # notes questions and closed chats left nothing
    for conv in hammer.open:
        view = engine.conversation(conv)
        roles = [m["role"] for m in view.messages]
        assert roles == ["user", "assistant"] * (len(roles) // 2), roles
        assert engine.context_used(conv) == view.context_used
    assert set(engine.adapters["active"]) <= set(ADAPTERS)
    # A swap drops every cache. Swap twice: the hammer may have left {} active, and setting the same set
    # again is (rightly) no change at all.
    engine.set_adapters({ADAPTERS[0]: 1.0})
    engine.set_adapters({})
    assert all(engine.context_used(conv) == 0 for conv in hammer.open)
    for conv in hammer.open:
        engine.close_conversation(conv)
    assert engine.conversation_ids() == []
