"""What a caller asks of generation and what it gets back: parameters, per-token events, the result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from macllm.generation.sampling import SamplingParams

if TYPE_CHECKING:
    from macllm.structured import Constraint


@dataclass
class GenerationParams(SamplingParams):
    max_tokens: int = 256
    stop_strings: tuple[str, ...] = ()
    top_alternatives: int = 0  # >0: each token event carries that many most likely alternatives
    enable_thinking: bool | None = None  # chat templates' switch for reasoning models; None: the template's default
    # Speculative decoding (speculative.py): a draft model with the same tokenizer, which the Engine loads and
    # keeps, or guesses copied from the prompt. Either way the output is the model's own.
    draft_model: str | None = None
    prompt_lookup: bool | None = None  # None: the caller's default (off; on for notes answers, rag/answer.py)
    draft_tokens: int = 0  # guesses per round; 0: adapt to the acceptance rate
    constraint: Constraint | None = None  # structured.compile_constraint(...): output follows a schema or grammar


@dataclass
class TokenEvent:
    token_id: int
    text: str  # new, complete answer text this token made visible (may be "")
    logprob: float
    alternatives: list[tuple[int, float]] | None = None
    reasoning: str = ""  # new text of a reasoning model's thinking (between <think> and </think>)
    drafted: bool = False  # speculative decoding guessed this token and the model confirmed it


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    prefilled_tokens: int = 0  # prompt tokens actually computed (the rest came from the KV cache)
    prompt_tps: float = 0.0
    ttft_s: float = 0.0
    generation_tokens: int = 0
    generation_tps: float = 0.0
    peak_memory_mb: float = 0.0
    draft_proposed: int = 0  # speculative decoding: tokens guessed, and how many of them the model kept
    draft_accepted: int = 0

    @property
    def acceptance_rate(self) -> float | None:
        return self.draft_accepted / self.draft_proposed if self.draft_proposed else None


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" | "length" | "cancelled"
    stats: GenerationStats
    fed_tokens: list[int] = field(default_factory=list)  # exactly what the KV cache now holds
    reasoning: str = ""  # a reasoning model's thinking, without its tags; `text` is the answer after it
