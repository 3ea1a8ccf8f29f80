"""Messages the engine bridge posts to the app (from worker threads, delivered on the UI thread)."""

from __future__ import annotations

from textual.message import Message

from macllm.loaded import ModelInfo


class ModelLoaded(Message):
    def __init__(self, info: ModelInfo) -> None:
        super().__init__()
        self.info = info


class ModelLoadFailed(Message):
    def __init__(self, source: str, error: str) -> None:
        super().__init__()
        self.source = source
        self.error = error


class AnswerToken(Message):
    """One generated token: the answer text and the thinking it made visible (either may be empty; a reasoning
    model's thinking is `event.reasoning`), its probability and top alternatives."""

    def __init__(self, answer_id: int, event) -> None:
        super().__init__()
        self.answer_id = answer_id
        self.event = event


class AnswerPrefill(Message):
    """A long prompt is being read before the first token: `done` of `total` tokens so far."""

    def __init__(self, answer_id: int, done: int, total: int) -> None:
        super().__init__()
        self.answer_id = answer_id
        self.done = done
        self.total = total


class AnswerFinished(Message):
    def __init__(self, answer_id: int, result) -> None:
        super().__init__()
        self.answer_id = answer_id
        self.result = result


class AnswerFailed(Message):
    def __init__(self, answer_id: int, error: str) -> None:
        super().__init__()
        self.answer_id = answer_id
        self.error = error


class AdaptersChanged(Message):
    """The active adapters are now `active` ({} = base model); the swap itself took `elapsed_ms`."""

    def __init__(self, active: dict[str, float], elapsed_ms: float) -> None:
        super().__init__()
        self.active = active
        self.elapsed_ms = elapsed_ms


class AdaptersFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class IndexProgress(Message):
    def __init__(self, done: int, total: int, path: str) -> None:
        super().__init__()
        self.done = done
        self.total = total
        self.path = path


class IndexFinished(Message):
    def __init__(self, summary) -> None:
        super().__init__()
        self.summary = summary


class IndexFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class AnswerSources(Message):
    """The numbered note excerpts a notes-mode answer was given (they arrive before its tokens)."""

    def __init__(self, answer_id: int, sources: list) -> None:
        super().__init__()
        self.answer_id = answer_id
        self.sources = sources
