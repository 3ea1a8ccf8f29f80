"""What a caller asks of generation and what it gets back: parameters, per-token events, the result."""

from __future__ import annotations

from dataclasses import dataclass, field

from macllm.generation.sampling import SamplingParams


@dataclass
class GenerationParams(SamplingParams):
    max_tokens: int = 256
    stop_strings: tuple[str, ...] = ()
    top_alternatives: int = 0  # >0: each token event carries that many most likely alternatives


@dataclass
class TokenEvent:
    token_id: int
    text: str  # new, complete text this token made visible (may be "")
    logprob: float
    alternatives: list[tuple[int, float]] | None = None


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    prefilled_tokens: int = 0  # prompt tokens actually computed (the rest came from the KV cache)
    prompt_tps: float = 0.0
    ttft_s: float = 0.0
    generation_tokens: int = 0
    generation_tps: float = 0.0
    peak_memory_mb: float = 0.0


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" | "length" | "cancelled"
    stats: GenerationStats
    fed_tokens: list[int] = field(default_factory=list)  # exactly what the KV cache now holds
