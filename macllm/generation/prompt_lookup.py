"""Prompt lookup: guess the next tokens by finding the last few tokens earlier in the text and proposing what
followed them there. Answers that quote their sources (notes answers, code edits) repeat long runs of the
prompt, and a guess costs nothing to make; the model still checks every guessed token (see speculative.py).

An index from each n-gram to where its latest continuation starts is kept up to date as tokens arrive, so a
guess is a dictionary look-up, not a scan of a long prompt.
"""

from __future__ import annotations

MAX_NGRAM = 3  # the longest tail matched first: a longer match predicts the continuation better
MIN_NGRAM = 2  # a single token recurs too often to predict what follows it


class PromptLookup:
    def __init__(self, max_ngram: int = MAX_NGRAM, min_ngram: int = MIN_NGRAM):
        self.sizes = range(max_ngram, min_ngram - 1, -1)
        self.tokens: list[int] = []
        self._next: dict[tuple[int, ...], int] = {}  # n-gram -> where the tokens after its latest occurrence start

    def extend(self, tokens: list[int]) -> None:
        """Append tokens to the text searched."""
        for token in tokens:
            end = len(self.tokens)  # the n-grams ending just before `token` now have a continuation
            for n in self.sizes:
                if end >= n:
                    self._next[tuple(self.tokens[end - n:end])] = end
            self.tokens.append(token)

    def propose(self, k: int) -> list[int]:
        """Up to k tokens that followed the latest earlier occurrence of the longest matching tail; [] if none."""
        for n in self.sizes:
            if len(self.tokens) <= n:
                continue
            start = self._next.get(tuple(self.tokens[-n:]))
            if start is not None:
                return self.tokens[start:start + k]
        return []
