"""Per-chat settings: what each chat remembers about how to answer."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from macllm.generation import GenerationParams


@dataclass
class ChatSettings:
    model: str = ""
    system: str = ""
    temperature: float = 0.7
    top_p: float = 0.95
    min_p: float = 0.05
    max_tokens: int = 512
    # Reasoning models (Qwen3): sent to the template as enable_thinking; None leaves the template's own default.
    thinking: bool | None = None
    # Speculative decoding (same output, faster): a draft model with the same tokenizer ("" = none), and
    # prompt lookup (None: the default, on for notes answers only).
    draft_model: str = ""
    prompt_lookup: bool | None = None

    @classmethod
    def from_dict(cls, data: dict, default_model: str) -> "ChatSettings":
        known = {f.name for f in fields(cls)}
        s = cls(**{k: v for k, v in (data or {}).items() if k in known})
        s.model = s.model or default_model
        if not isinstance(s.thinking, bool):  # a stored value of another kind: the template decides
            s.thinking = None
        if not isinstance(s.prompt_lookup, bool):
            s.prompt_lookup = None
        if not isinstance(s.draft_model, str):
            s.draft_model = ""
        return s

    def to_dict(self) -> dict:
        return asdict(self)

    def generation_params(self) -> GenerationParams:
        # Alternatives feed the token inspector; cheap next to a decode step.
        return GenerationParams(temperature=self.temperature, top_p=self.top_p, min_p=self.min_p,
                                max_tokens=self.max_tokens, top_alternatives=5, enable_thinking=self.thinking,
                                draft_model=self.draft_model or None, prompt_lookup=self.prompt_lookup)
