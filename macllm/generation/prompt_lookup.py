"""Prompt lookup: guess the next tokens by finding the last few tokens earlier in the text and proposing what
followed them there. Answers that quote their sources (notes answers, code edits) repeat long runs of the
prompt, and a guess costs nothing to make; the model still checks every guessed token (see speculative.py).

An index from each n-gram to where its latest continuation starts is kept up to date as tokens arrive, so a
guess is a dictionary look-up, not a scan of a long prompt. How far the match reaches back (`Match.length`) says
how much to trust it: an answer that has copied its source for a dozen tokens goes on copying, while two
tokens in common ("the S3") predict little (speculative.py keeps acceptance per length).
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_NGRAM = 4  # the longest tail matched first: a longer match predicts the continuation better
MIN_NGRAM = 2  # a single token recurs too often to predict what follows it
MAX_MATCH = 32  # how far back a match's length is counted (longer ones are all trusted alike)


@dataclass
class Match:
    guesses: list[int]
    length: int  # tokens before the guesses that equal the text's own last tokens (>= MIN_NGRAM)


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

    def match(self, k: int) -> Match | None:
        """Up to k tokens that followed the latest earlier occurrence of the longest matching tail, and how far
        back that occurrence matches; None if no tail recurs."""
        text = self.tokens
        for n in self.sizes:
            if len(text) <= n:
                continue
            start = self._next.get(tuple(text[-n:]))
            if start is None:
                continue
            length = n
            while length < MAX_MATCH and start - length - 1 >= 0 and text[start - length - 1] == text[-length - 1]:
                length += 1
            return Match(text[start:start + k], length)
        return None

    def propose(self, k: int) -> list[int]:
        """Up to k tokens that followed the latest earlier occurrence of the longest matching tail; [] if none."""
        found = self.match(k)
        return found.guesses if found is not None else []
