"""Notes search: chunk Markdown/text files, embed the chunks, keep them in SQLite, retrieve and answer."""
