"""Chunking: Markdown by headings with line numbers, code blocks and tables kept whole, limits respected."""

from __future__ import annotations

from macllm.rag.chunking import chunk_file


def words(texts: list[str]) -> list[int]:
    """A stand-in tokenizer: one token per whitespace-separated word."""
    return [len(t.split()) for t in texts]


NOTE = """# Title

Intro paragraph with some words.

## Setup

Install it:

```bash
pip install thing
# a comment that looks like a heading
```

| a | b |
|---|---|
| 1 | 2 |

### Deeper

Deep text.

## Other

Last words.
"""


def test_heading_paths_and_line_numbers():
    chunks = chunk_file("note.md", NOTE, words, limit=200)
    by_heading = {c.heading: c for c in chunks}
    assert list(by_heading) == ["Title", "Title > Setup", "Title > Setup > Deeper", "Title > Other"]
    setup = by_heading["Title > Setup"]
    lines = NOTE.splitlines()
    assert setup.text == "\n".join(lines[setup.line_start - 1:setup.line_end])
    assert "# a comment that looks like a heading" in setup.text  # not a heading inside a fence
    assert by_heading["Title"].line_start == 3 and by_heading["Title > Other"].line_end == 24
    assert by_heading["Title > Other"].embed_text.startswith("Title > Other\n\n")


def test_chunks_fit_the_limit_and_fences_stay_whole():
    para = " ".join(["word"] * 30)
    text = "# T\n\n" + "\n\n".join([para] * 5) + "\n\n```\n" + "\n".join(["code line here"] * 10) + "\n```\n"
    chunks = chunk_file("n.md", text, words, limit=80)
    for c in chunks:
        assert words([c.embed_text])[0] <= 80
    fences = [c for c in chunks if "```" in c.text]
    assert len(fences) == 1 and fences[0].text.count("```") == 2  # the code block is one chunk, whole


def test_oversized_blocks_are_cut_by_lines_then_words():
    text = "# T\n\n```\n" + "\n".join(f"line {i} of code" for i in range(100)) + "\n```\n\n" + "w " * 500
    chunks = chunk_file("n.md", text, words, limit=50)
    assert all(words([c.embed_text])[0] <= 50 for c in chunks)
    assert sum(c.text.count("of code") for c in chunks) == 100  # every line kept, none twice
    assert sum(c.text.split().count("w") for c in chunks) == 500
    assert chunks[-1].line_start == chunks[-1].line_end == 106  # a cut single line keeps its line number


def test_cjk_without_spaces_is_cut_to_fit():
    text = "注意力機制讓每個詞都能看到句子中的其他詞" * 50

    def chars(texts):
        return [len(t.replace(" ", "")) for t in texts]

    chunks = chunk_file("zh.txt", text, chars, limit=100)
    assert len(chunks) > 1 and all(chars([c.embed_text])[0] <= 100 for c in chunks)
    assert "".join(c.text.replace(" ", "") for c in chunks) == text


def test_plain_text_by_paragraphs_with_small_overlap():
    paras = [f"para{i} " + "x " * 10 for i in range(6)]
    text = "\n\n".join(paras)
    chunks = chunk_file("notes.txt", text, words, limit=25, overlap=12)
    assert all(c.heading == "" for c in chunks)
    assert chunks[0].line_start == 1
    # each chunk after the first starts with the previous chunk's last paragraph
    for before, after in zip(chunks[:-1], chunks[1:], strict=True):
        assert after.text.splitlines()[0] == before.text.splitlines()[-1]


def test_front_matter_empty_and_hash():
    text = "---\ntitle: Hello\ntags: [a]\n---\n\n# Real title\n\nBody.\n"
    chunks = chunk_file("n.md", text, words, limit=100)
    assert chunks[0].text.startswith("---\ntitle: Hello") and chunks[0].heading == ""
    assert chunks[-1].heading == "Real title"
    assert chunk_file("n.md", "", words, limit=100) == []
    assert chunk_file("n.md", "\n\n  \n", words, limit=100) == []
    a, b = chunk_file("n.md", "# A\n\ntext", words, 100)[0], chunk_file("n.md", "# B\n\ntext", words, 100)[0]
    assert a.text == b.text and a.hash != b.hash  # the heading is part of what is embedded
