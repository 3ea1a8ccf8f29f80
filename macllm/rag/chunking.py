"""Split a note into chunks that fit the embedder: Markdown by headings (markdown-it-py), text by paragraphs.

A chunk is whole source lines plus the heading path it sits under ("Title > Section"). The heading path
is prepended for embedding and keyword search, so a chunk's limit counts it too. Code blocks and tables
are only split when one alone is bigger than a chunk.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from typing import Callable

from markdown_it import MarkdownIt

CountTokens = Callable[[list[str]], list[int]]

MARKDOWN_SUFFIXES = {".md", ".markdown", ".mdown", ".mkd"}
_HEADING_SEPARATOR = " > "
_FRONT_MATTER = re.compile(r"\A---\r?\n.*?^(---|\.\.\.)\s*$", re.MULTILINE | re.DOTALL)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])")
# Block structure only: inline parsing (emphasis, links) was a third of the chunking time and is never
# read (a heading's title is its inline token's raw content, set by the block parser). Made once.
_BLOCK_PARSER = MarkdownIt("commonmark").enable("table").disable("inline")


@dataclass(frozen=True)
class Chunk:
    text: str  # the source lines
    heading: str  # heading path, "" when none
    line_start: int  # 1-based, inclusive
    line_end: int

    @property
    def embed_text(self) -> str:
        """What is embedded and keyword-indexed: the heading path, then the text."""
        return f"{self.heading}\n\n{self.text}" if self.heading else self.text

    @functools.cached_property
    def hash(self) -> str:  # cached: the indexer asks for it ~8 times per chunk
        return hashlib.sha256(self.embed_text.encode("utf-8")).hexdigest()


@dataclass
class _Block:
    lines: list[str]
    start: int  # 0-based line index
    heading: str
    atomic: bool  # a code block or table: keep whole when it fits
    end: int = -1  # 0-based line index after the block; -1: start + len(lines)

    def __post_init__(self):
        if self.end < 0:
            self.end = self.start + len(self.lines)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def chunk_file(name: str, text: str, count_tokens: CountTokens, limit: int, overlap: int = 32) -> list[Chunk]:
    """Chunks of a note; Markdown by its suffix, everything else as plain text."""
    is_markdown = any(name.lower().endswith(s) for s in MARKDOWN_SUFFIXES)
    blocks = markdown_blocks(text) if is_markdown else text_blocks(text)
    return pack(blocks, count_tokens, limit, overlap)


def chunk_pages(pages: list[str], count_tokens: CountTokens, limit: int, overlap: int = 32) -> list[Chunk]:
    """Chunks of a paged document (a PDF): paragraphs per page, under the heading "Page N", lines counted
    from the top of each page; no chunk spans two pages. Empty pages give no chunks."""
    chunks: list[Chunk] = []
    for number, text in enumerate(pages, start=1):
        blocks = [_Block(b.lines, b.start, f"Page {number}", b.atomic) for b in text_blocks(text)]
        chunks += pack(blocks, count_tokens, limit, overlap)
    return chunks


def markdown_blocks(text: str) -> list[_Block]:
    """Top-level Markdown blocks with the heading path each sits under."""
    lines = text.splitlines()
    blocks: list[_Block] = []
    front = _FRONT_MATTER.match(text)
    skip = 0
    if front:  # YAML front matter: one block of its own, hidden from the parser (which reads it as a heading)
        skip = front.group(0).count("\n") + 1
        blocks.append(_Block(lines[:skip], 0, "", atomic=True))
    tokens = _BLOCK_PARSER.parse("\n" * skip + "\n".join(lines[skip:]))
    headings: list[tuple[int, str]] = []
    for i, token in enumerate(tokens):
        if token.level != 0 or token.map is None or token.nesting == -1:
            continue
        start, end = token.map
        if token.type == "heading_open":
            depth = int(token.tag[1:])
            title = tokens[i + 1].content.strip()
            headings = [(d, t) for d, t in headings if d < depth] + [(depth, title)]
            continue
        path = _HEADING_SEPARATOR.join(t for _, t in headings)
        atomic = token.type in ("fence", "code_block", "table_open", "html_block")
        blocks.append(_Block(lines[start:end], start, path, atomic))
    return blocks


def text_blocks(text: str) -> list[_Block]:
    """Paragraphs: runs of non-blank lines."""
    blocks: list[_Block] = []
    current: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines() + [""]):
        if line.strip():
            if not current:
                start = number
            current.append(line)
        elif current:
            blocks.append(_Block(current, start, "", atomic=False))
            current = []
    return blocks


def pack(blocks: list[_Block], count_tokens: CountTokens, limit: int, overlap: int) -> list[Chunk]:
    """Greedy: consecutive blocks under one heading path share a chunk while they fit."""
    if not blocks:
        return []
    headings = sorted({b.heading for b in blocks})
    counted = count_tokens(headings + [b.text for b in blocks])  # one tokenizer call per file
    heading_cost = dict(zip(headings, counted[:len(headings)], strict=True))
    costs = counted[len(headings):]
    chunks: list[Chunk] = []
    group: list[tuple[_Block, int]] = []

    def flush():
        if group:
            chunks.append(_chunk_of([b for b, _ in group]))

    for block, cost in zip(blocks, costs, strict=True):
        budget = max(8, limit - heading_cost[block.heading] - 2)  # room for the heading path and its newlines
        if group and group[0][0].heading != block.heading:
            flush()
            group = []
        if cost > budget:  # too big alone: close the group and cut this block by lines, then words
            flush()
            group = []
            for piece in _split_block(block, count_tokens, budget):
                chunks.append(_chunk_of([piece]))
            continue
        if group and sum(c for _, c in group) + cost > budget:
            flush()
            tail = group[-1]
            # A small overlap: the previous chunk's last block, when it is small and still fits.
            group = [tail] if tail[1] <= overlap and tail[1] + cost <= budget and not tail[0].atomic else []
        group.append((block, cost))
    flush()
    return chunks


def _chunk_of(blocks: list[_Block]) -> Chunk:
    first, last = blocks[0], blocks[-1]
    lines: list[str] = []
    end = first.start
    for b in blocks:  # keep the blank lines between blocks, as in the file
        lines.extend([""] * max(0, b.start - end) if lines else [])
        lines.extend(b.lines)
        end = b.end
    return Chunk("\n".join(lines).strip("\n"), first.heading, first.start + 1, last.end)


def _split_block(block: _Block, count_tokens: CountTokens, budget: int) -> list[_Block]:
    """Pieces of one over-long block, each within budget: whole lines, else sentences, else words."""
    costs = count_tokens(block.lines)
    units: list[tuple[str, int, int]] = []  # (text, line index, tokens)
    for offset, (line, cost) in enumerate(zip(block.lines, costs, strict=True)):
        parts = [(line, cost)] if cost <= budget else _split_long_line(line, count_tokens, budget)
        units.extend((text, block.start + offset, c) for text, c in parts)
    pieces: list[_Block] = []
    current: list[tuple[str, int, int]] = []
    for unit in units:
        if current and sum(c for _, _, c in current) + unit[2] > budget:
            pieces.append(_piece(current, block))
            current = []
        current.append(unit)
    if current:
        pieces.append(_piece(current, block))
    return pieces


def _piece(units: list[tuple[str, int, int]], block: _Block) -> _Block:
    """Parts of one source line rejoin with a space, separate lines with a newline."""
    lines: list[str] = []
    previous = None
    for text, line, _ in units:
        if line == previous:
            lines[-1] += " " + text
        else:
            lines.append(text)
        previous = line
    return _Block(lines, units[0][1], block.heading, block.atomic, end=units[-1][1] + 1)


def _split_long_line(text: str, count_tokens: CountTokens, budget: int) -> list[tuple[str, int]]:
    """Sentences, then words, then character runs (CJK has no spaces), packed up to budget."""
    pieces: list[str] = []
    for sentence in filter(None, _SENTENCE_END.split(text)):
        pieces.extend(sentence.split() or [sentence])
    costs = count_tokens(pieces)
    small: list[tuple[str, int]] = []
    for piece, cost in zip(pieces, costs, strict=True):
        if cost <= budget:
            small.append((piece, cost))
            continue
        step = max(1, len(piece) * budget // (cost * 2))  # half the budget's worth of characters
        runs = [piece[i:i + step] for i in range(0, len(piece), step)]
        small.extend(zip(runs, count_tokens(runs), strict=True))
    parts: list[tuple[str, int]] = []
    current: list[str] = []
    total = 0
    for piece, cost in small:
        if current and total + cost > budget:
            parts.append((" ".join(current), total))
            current, total = [], 0
        current.append(piece)
        total += cost
    if current:
        parts.append((" ".join(current), total))
    return parts
