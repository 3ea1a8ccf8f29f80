"""Where chats and files are written: one atomic writer, the chat store."""
