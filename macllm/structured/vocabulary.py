"""Our Tokenizer as llguidance sees it: its token trie, built once per tokenizer (about 1 s for 49k tokens,
5 s for 151k) and kept while the tokenizer lives."""

from __future__ import annotations

import threading
import weakref

import llguidance

from macllm.errors import MacllmError

_made: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_lock = threading.Lock()  # the server compiles constraints from request threads


def grammar_tokenizer(tokenizer) -> llguidance.LLTokenizer:
    """The llguidance tokenizer for our `Tokenizer` (same ids, same end-of-sequence tokens)."""
    with _lock:
        made = _made.get(tokenizer)
        if made is None:
            if not tokenizer.eos_token_ids:
                raise MacllmError("this model's tokenizer has no end-of-sequence token, which constrained "
                                  "output needs to end; use a model with one")
            made = llguidance.LLTokenizer(tokenizer.hf_tokenizer.to_str(), n_vocab=tokenizer.vocab_size,
                                          eos_token=sorted(tokenizer.eos_token_ids))
            _made[tokenizer] = made
        return made
