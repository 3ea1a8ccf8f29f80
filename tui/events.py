"""Messages the engine bridge posts to the app (from worker threads, delivered on the UI thread)."""

from __future__ import annotations

from textual.message import Message


class ModelLoaded(Message):
    def __init__(self, info: dict) -> None:
        super().__init__()
        self.info = info


class ModelLoadFailed(Message):
    def __init__(self, source: str, error: str) -> None:
        super().__init__()
        self.source = source
        self.error = error


class AnswerToken(Message):
    """One generated token: its text (possibly empty), probability and top alternatives."""

    def __init__(self, answer_id: int, event) -> None:
        super().__init__()
        self.answer_id = answer_id
        self.event = event


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
