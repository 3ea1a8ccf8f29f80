"""The list of saved chats, newest first."""

from __future__ import annotations

from textual.message import Message
from textual.widgets import Label, ListItem, ListView


class ChatListItem(ListItem):
    def __init__(self, chat_id: str, title: str) -> None:
        super().__init__(Label(title, classes="chat-title"))
        self.chat_id = chat_id
        self.title = title


class ChatList(ListView):
    class ChatChosen(Message):
        def __init__(self, chat_id: str) -> None:
            super().__init__()
            self.chat_id = chat_id

    async def show(self, chats: list, current: str | None) -> None:
        await self.clear()
        items = [ChatListItem(c.id, c.title) for c in chats]
        if items:
            await self.extend(items)
        for i, item in enumerate(items):
            if item.chat_id == current:
                self.index = i

    def on_list_view_selected(self, event: ListView.Selected) -> None:
        event.stop()
        if isinstance(event.item, ChatListItem):
            self.post_message(self.ChatChosen(event.item.chat_id))
