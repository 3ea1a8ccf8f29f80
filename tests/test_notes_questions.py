"""Notes questions leave nothing behind: after 100 of them the engine holds no conversation and MLX's
active memory is where it was after the first few (each answer's KV cache is freed with its stream)."""

from __future__ import annotations

import mlx.core as mx
import pytest

from macllm.engine import Engine
from macllm.generation import GenerationParams
from macllm.rag.answer import ask
from tests.notes_fixture import QUESTIONS, notes_retriever

QUESTION_COUNT = 100
WARM_UP = 10  # the first answers allocate what every later one reuses (retriever matrix, kernels)
SHORT = GenerationParams(max_tokens=4)
# One leaked tiny-model KV cache is at least 128 KiB (2 layers x 2 heads x 16 dims x k+v x float32 x 256
# positions); 90 of them would be over 11 MiB.
ALLOWED_GROWTH = 1 << 20


@pytest.fixture(scope="module")
def engine(tiny_llama_folder, tmp_path_factory):
    with Engine(str(tiny_llama_folder), progress=False) as e:
        e.retriever = notes_retriever(e, tmp_path_factory.mktemp("notes-questions"))
        yield e


def active_memory(engine: Engine) -> int:
    return engine.submit(mx.get_active_memory).result()


def test_a_hundred_notes_questions_keep_conversations_and_memory_flat(engine):
    before = set(engine.conversation_ids())
    baseline = None
    for i in range(QUESTION_COUNT):
        answer = ask(engine, engine.retriever, QUESTIONS[i % len(QUESTIONS)], k=2, params=SHORT)
        assert answer.stream.result(timeout=60).token_ids
        if i + 1 == WARM_UP:
            baseline = active_memory(engine)
    assert set(engine.conversation_ids()) == before
    assert baseline is not None
    growth = active_memory(engine) - baseline
    assert growth < ALLOWED_GROWTH, f"active memory grew by {growth / 2**20:.1f} MiB over {QUESTION_COUNT} questions"
