"""What the chat screen does when its chat file cannot be used: it says so, keeps what is on screen and
what was typed, and offers to continue in a fresh file beside the old one (which is never changed).

`store_guarded` wraps a handler so a ChatStoreError becomes that, instead of a crash that loses the input.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from textual.screen import Screen

from macllm.storage.chat_store import ChatStore, ChatStoreError, auto_title, fresh_path
from tui.screens.prompt_screen import ConfirmScreen
from tui.widgets.chat_message import ChatMessage
from tui.widgets.store_problem import StoreProblemLine


def store_guarded(method: Callable) -> Callable:
    """A chat-screen method whose chat-file failure is shown (and a fresh file offered) instead of raised."""
    if inspect.iscoroutinefunction(method):
        @functools.wraps(method)
        async def guarded_async(screen: "ChatSaving", *args: Any, **kwargs: Any) -> Any:
            try:
                return await method(screen, *args, **kwargs)
            except ChatStoreError as e:
                screen.store_failed(e)
        return guarded_async

    @functools.wraps(method)
    def guarded(screen: "ChatSaving", *args: Any, **kwargs: Any) -> Any:
        try:
            return method(screen, *args, **kwargs)
        except ChatStoreError as e:
            screen.store_failed(e)
    return guarded


class ChatSaving(Screen):
    """Mixed into ChatScreen, which provides `chat_id`, `settings`, `answer_widget` and `conversation`."""

    chat_id: str | None
    answer_widget: ChatMessage | None
    _offering = False

    @property
    def store(self) -> ChatStore:
        """The app's chat file; without one (it could not be opened) every use raises its problem."""
        store = self.app.store
        if store is None:
            raise ChatStoreError(self.app.store_path, self.app.store_problem)
        return store

    def store_failed(self, error: ChatStoreError, offer: bool = False) -> None:
        """Show the problem; offer a fresh file when it is new (or `offer`), else say it once more."""
        new = self.app.store_problem != str(error)
        self.app.store_problem = str(error)
        self.show_store_problem()
        if new or offer:
            self.offer_fresh_store()
        else:
            self.notify(str(error), title="Not saved", severity="error", timeout=8)

    def show_store_problem(self) -> None:
        problem = self.app.store_problem
        line = self.query_one(StoreProblemLine)
        if problem:
            line.show(problem)
        else:
            line.hide()

    def offer_fresh_store(self) -> None:
        if self._offering:  # one dialog at a time, however many saves failed meanwhile
            return
        self._offering = True
        old = self.app.store_path
        question = (f"{self.app.store_problem}\n\nContinue in a fresh chat file, {fresh_path(old)}? "
                    f"{old} stays exactly as it is; this chat and what you typed come along.")

        async def answered(yes: bool | None) -> None:
            self._offering = False
            if yes:
                await self.continue_in_fresh_store()

        self.app.push_screen(ConfirmScreen(question, yes="Continue in a fresh file", no="Not now",
                                           yes_variant="primary"), answered)

    async def continue_in_fresh_store(self) -> None:
        """Switch files and carry the chat on screen over (one transaction), keeping its id: the engine's copy
        and an answer still streaming stay attached to it."""
        old_path = self.app.store_path
        title = self.current_title()
        try:
            store = self.app.use_fresh_store()
        except ChatStoreError as e:
            self.notify(str(e), title="No fresh chat file", severity="error", timeout=10)
            return
        shown = [w for w in self.conversation.query(ChatMessage)
                 if w is not self.answer_widget and w.finish_reason != "error"]  # failed answers are never saved
        if self.chat_id is not None and shown:
            first = next((w.content for w in shown if w.role == "user"), "")
            try:
                store.add_conversation_with_messages(
                    title or auto_title(first), self.settings.to_dict(),
                    [(w.role, w.content, w.finish_reason, w.meta) for w in shown], conversation_id=self.chat_id)
            except ChatStoreError as e:
                self.store_failed(e)
                return
            for widget, saved in zip(shown, store.messages(self.chat_id), strict=True):
                widget.message_id = saved.id
        else:
            self.chat_id = None
        self.show_store_problem()
        await self.refresh_chat_list()
        self.notify(f"Chats are now saved in {store.path}; {old_path} was left as it is.", timeout=12)

    def current_title(self) -> str | None:
        """This chat's title if the old file can still tell it."""
        try:
            return self.store.get_conversation(self.chat_id).title if self.chat_id else None
        except ChatStoreError:
            return None
