"""The one place the app talks to the macllm Engine.

The Engine owns all MLX work on its own thread. Here, thread workers wait on its futures and token
streams and post Textual messages back, so the UI thread never blocks and never touches MLX.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from macllm.engine import Engine, TokenStream
from macllm.errors import MacllmError
from macllm.generate import GenerationParams, GenerationResult

from tui.events import AnswerFailed, AnswerFinished, AnswerToken, ModelLoaded, ModelLoadFailed

if TYPE_CHECKING:
    from textual.app import App


def _one_line(error: BaseException) -> str:
    if isinstance(error, MacllmError):
        return str(error)
    return f"{type(error).__name__}: {error}"


class EngineBridge:
    def __init__(self, app: "App", engine: Engine | None = None):
        self.app = app
        self.engine = engine or Engine()
        self.model_source: str | None = None
        self.loading = False
        self._stream: TokenStream | None = None
        self._answer_ids = itertools.count(1)
        self._conversations: dict[str, str] = {}  # stored chat id -> engine conversation id

    # --- model ---------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.engine.loaded is not None and not self.loading

    @property
    def info(self) -> dict:
        return self.engine.info

    def load_model(self, source: str, keep_quantized: bool = False) -> None:
        self.loading = True
        self.model_source = source
        future = self.engine.load(source, keep_quantized=keep_quantized, progress=False)

        def wait() -> None:
            try:
                info = future.result()
            except BaseException as e:  # any failure becomes a notification + model picker
                self.loading = False
                self.app.post_message(ModelLoadFailed(source, _one_line(e)))
                return
            self.loading = False
            self._conversations.clear()
            self.app.post_message(ModelLoaded(info))

        self.app.run_worker(wait, thread=True, group="model", exit_on_error=False)

    # --- conversations -------------------------------------------------------------------
    def sync_conversation(self, chat_id: str, system: str | None, messages: list[dict]) -> str:
        """Make the engine's copy of a chat match what is stored (keeps its KV cache when it can)."""
        conv_id = self._conversations.get(chat_id)
        if conv_id is None or conv_id not in self.engine.conversations:
            conv_id = self.engine.new_conversation(system=system, messages=messages)
            self._conversations[chat_id] = conv_id
        else:
            conv = self.engine.conversation(conv_id)
            conv.system = system
            conv.messages = [dict(m) for m in messages]
        return conv_id

    def forget(self, chat_id: str) -> None:
        conv_id = self._conversations.pop(chat_id, None)
        if conv_id:
            self.engine.close_conversation(conv_id)

    def context_used(self, chat_id: str) -> int:
        conv_id = self._conversations.get(chat_id)
        return self.engine.context_used(conv_id) if conv_id in self.engine.conversations else 0

    # --- answers -------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._stream is not None

    def answer(self, chat_id: str, system: str | None, messages: list[dict], params: GenerationParams,
               target=None) -> int:
        """Stream an answer to `messages` (which end with the user's turn). Token messages are posted
        to `target` (the chat screen; default the app). Returns the answer id."""
        target = target or self.app
        conv_id = self.sync_conversation(chat_id, system, messages)
        answer_id = next(self._answer_ids)
        stream = self.engine.reply(conv_id, params)
        self._stream = stream

        def pump() -> None:
            try:
                for event in stream:
                    if isinstance(event, GenerationResult):
                        target.post_message(AnswerFinished(answer_id, event))
                    else:
                        target.post_message(AnswerToken(answer_id, event))
            except BaseException as e:
                target.post_message(AnswerFailed(answer_id, _one_line(e)))
            finally:
                if self._stream is stream:
                    self._stream = None

        self.app.run_worker(pump, thread=True, group="answer", exit_on_error=False)
        return answer_id

    # --- adapters ------------------------------------------------------------------------
    def use_adapter(self, name: str) -> None:
        """Load `name` from the store (again, if a retrained copy replaced it) and make it the only
        active adapter; a notification says how it went. Runs off the UI thread."""
        def swap() -> None:
            try:
                if any(a["name"] == name for a in self.engine.adapters["loaded"]):
                    self.engine.unload_adapter(name)
                self.engine.load_adapter(name)
                self.engine.set_adapters({name: 1.0})
            except BaseException as e:
                self.app.call_from_thread(self.app.notify, _one_line(e), title="Adapter not loaded",
                                          severity="error")
                return
            self.app.call_from_thread(self.app.notify, f"Using adapter {name!r}.", timeout=4)

        self.app.run_worker(swap, thread=True, group="adapters", exit_on_error=False)

    def set_adapters(self, scales: dict[str, float]) -> None:
        """Pass-through to Engine.set_adapters (blocks until the engine thread has applied it)."""
        self.engine.set_adapters(scales)

    def stop(self) -> None:
        if self._stream is not None:
            self._stream.cancel()

    def shutdown(self) -> None:
        self.stop()
        self.engine.close()
