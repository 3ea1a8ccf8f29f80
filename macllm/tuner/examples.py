"""A training example (token ids, masked prompt length, source note) and a train/valid split of them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Example:
    tokens: list[int]
    prompt_len: int = 0  # targets before this position are not trained (--mask-prompt)
    source: str = ""  # the note (relative path) it came from


@dataclass
class TrainingData:
    train: list[Example]
    valid: list[Example]
    stats: dict = field(default_factory=dict)

    @property
    def train_tokens(self) -> int:
        return sum(len(e.tokens) for e in self.train)
