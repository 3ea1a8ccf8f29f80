"""Generation: `steps` (the token loop: prefill, decode, sampling) under `stream` (text, stops, timing)."""

from macllm.generation.params import (
           GenerationParams,
           GenerationResult,
           GenerationStats,
           TokenEvent,
)
from macllm.generation.sampling import SamplingParams
from macllm.generation.stop_strings import StopStringWatcher
from macllm.generation.stream import generate, stream_generate

__all__ = ["GenerationParams", "GenerationResult", "GenerationStats", "SamplingParams", "StopStringWatcher",
           "TokenEvent", "generate", "stream_generate"]
