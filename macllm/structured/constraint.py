"""Compiling a JSON schema or grammar into a Constraint, and the per-generation state that masks logits.

The token loop (generation/steps.py) calls `ConstraintState.mask(logits, previous)` once per step: it starts
the step's forward pass (`mx.async_eval`), advances the parser with the previous token while the model
computes, and returns the logits with every token the grammar forbids at -inf, still lazy. The parser's own
cost is ~15-25 µs a token (docs/benchmarks.md), small beside a decode step.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Callable

import llguidance
import mlx.core as mx
import numpy as np
from llguidance.gbnf_to_lark import GbnfToLarkError, gbnf_to_lark, is_lark_syntax

from macllm.errors import MacllmError
from macllm.structured.vocabulary import grammar_tokenizer

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions  # declared in the type stub only

# Output JSON as Python's json.dumps writes it: one space after ',' and ':', no other whitespace. A free
# whitespace rule lets a weak model pad forever; fixed separators keep every answer short and parseable.
JSON_OPTIONS: JsonCompileOptions = {"whitespace_flexible": False, "item_separator": ", ",
                                               "key_separator": ": "}

def _one_line(text: str) -> str:
    """An engine message on one line: its lines joined, caret markers dropped, cut at 240 characters."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip().strip("^")]
    joined = " ".join(lines) or "unknown error"
    return joined if len(joined) <= 240 else joined[:239] + "…"


def _what(kind: str) -> str:
    return "the grammar" if kind == "grammar" else "the JSON schema"


def _schema_grammar(schema) -> str:
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as e:
            raise MacllmError(f"the JSON schema is not valid JSON ({e}); fix the schema") from None
    if not isinstance(schema, dict):
        raise MacllmError("the JSON schema must be a JSON object such as {\"type\": \"object\"}")
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    except ValueError as e:
        raise MacllmError(f"cannot compile the JSON schema: {_one_line(str(e))}") from None


def _text_grammar(text: str) -> str:
    """A Lark grammar in llguidance's dialect (it has a `start:` rule), or else a llama.cpp GBNF grammar."""
    if not isinstance(text, str) or not text.strip():
        raise MacllmError("the grammar is empty; give a Lark grammar with a `start` rule")
    if not is_lark_syntax(text):
        try:
            text = gbnf_to_lark(text)
        except (GbnfToLarkError, ValueError, KeyError, IndexError) as e:
            raise MacllmError("cannot compile the grammar: it has no Lark `start:` rule and does not read as GBNF "
                              f"({_one_line(str(e))})") from None
    return llguidance.LLMatcher.grammar_from_lark(text)


class Constraint:
    """A compiled grammar for one tokenizer. Shared and immutable; `start()` gives a generation its state."""

    def __init__(self, tokenizer, grammar: str, kind: str):
        self.kind = kind  # "json_schema" | "json_object" | "grammar", for messages
        self._tokenizer = grammar_tokenizer(tokenizer)
        self._eos = sorted(tokenizer.eos_token_ids)
        self._vocab = tokenizer.vocab_size
        pristine = llguidance.LLMatcher(self._tokenizer, grammar, log_level=0)
        if pristine.is_error():
            raise MacllmError(f"cannot compile {_what(kind)}: {_one_line(pristine.get_error())}")
        self._pristine = pristine
        self._lock = threading.Lock()

    def start(self, free_until: str | None = None) -> ConstraintState:
        """Fresh parser state for one generation. With `free_until` (a reasoning model's `</think>` when the
        prompt opened its think block) the output is free until that text has been written, then constrained."""
        with self._lock:
            matcher = self._pristine.deep_copy()
        return ConstraintState(matcher, self._vocab, self._eos[0], self._tokenizer.decode_bytes,
                               free_until.encode() if free_until else None)


class ConstraintState:
    """One generation's parser: which tokens may come next, advanced by each chosen token."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab: int, eos: int,
                 decode: Callable[[list[int]], bytes], free_until: bytes | None = None):
        self._matcher = matcher
        self._words = np.zeros((vocab + 31) // 32, dtype=np.uint32)
        self._eos = eos
        self._decode = decode
        self._free_until = free_until
        self._free_tail = b""  # the end of the free text so far, enough to see `free_until` arrive

    def advance(self, token_id: int) -> None:
        if not self._matcher.consume_token(token_id):
            raise MacllmError(f"constrained generation went off its grammar at token {token_id}: "
                              f"{_one_line(self._matcher.get_error())}")

    def mask(self, logits: mx.array, previous: mx.array | None) -> mx.array:
        """logits (1, vocab) with the forbidden tokens at -inf. `previous` is the token chosen at the last
        step (lazy) or None at the first; it is fed to the parser while the model computes `logits`."""
        mx.async_eval(logits)
        if self._free_until is not None:
            if previous is not None:
                tail = self._free_tail + self._decode([int(previous[0].item())])  # type: ignore[arg-type]
                self._free_tail = tail[-4 * len(self._free_until):]
            if self._free_until not in self._free_tail:
                return logits  # still thinking: the think block is free text
            self._free_until, previous = None, None  # closed by `previous`; the answer starts here
        if previous is not None:
            self.advance(int(previous[0].item()))  # type: ignore[arg-type]  # a token id array holds ints
        if self._matcher.is_stopped():
            self._words[:] = 0  # the grammar is complete: only the end of sequence may follow
            self._words[self._eos // 32] = np.uint32(1 << (self._eos % 32))
        else:
            self._matcher.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
        words = mx.array(self._words)
        bits = (words[:, None] >> mx.arange(32, dtype=mx.uint32)) & 1  # (vocab/32, 32), bit j of word i = id 32i+j
        allowed = bits.reshape(1, -1).astype(mx.bool_)
        vocab = logits.shape[-1]
        if allowed.shape[-1] < vocab:  # the model's head may be wider than its tokenizer; the extra ids are unused
            allowed = mx.concatenate([allowed, mx.zeros((1, vocab - allowed.shape[-1]), dtype=mx.bool_)], axis=-1)
        return mx.where(allowed[:, :vocab], logits, mx.array(-mx.inf, dtype=logits.dtype))


def _grammar(json_schema, json_object: bool, grammar: str | None) -> tuple[str, str]:
    """(llguidance grammar, kind) from exactly one of the three ways to say what the output must be."""
    given = [json_schema is not None, bool(json_object), grammar is not None]
    if sum(given) != 1:
        raise MacllmError("give exactly one of a JSON schema, json_object or a grammar")
    if json_schema is not None:
        return _schema_grammar(json_schema), "json_schema"
    if json_object:
        return _schema_grammar({"type": "object"}), "json_object"
    assert grammar is not None
    return _text_grammar(grammar), "grammar"


def check_constraint(json_schema=None, json_object: bool = False, grammar: str | None = None) -> None:
    """Raise MacllmError (one line) if the schema or grammar cannot compile; needs no tokenizer, so a command
    or a request is refused before any model work."""
    text, kind = _grammar(json_schema, json_object, grammar)
    problem = llguidance.LLMatcher.validate_grammar(text)
    if problem:
        raise MacllmError(f"cannot compile {_what(kind)}: {_one_line(problem)}")


def compile_constraint(tokenizer, json_schema=None, json_object: bool = False,
                       grammar: str | None = None) -> Constraint:
    """A Constraint for our `Tokenizer` from exactly one of: a JSON schema (dict or JSON text), json_object=True
    (any JSON object), or a grammar (Lark in llguidance's dialect, or GBNF). Raises MacllmError (one line) on
    a schema or grammar llguidance cannot compile."""
    text, kind = _grammar(json_schema, json_object, grammar)
    return Constraint(tokenizer, text, kind)
