"""An adapter in memory, whatever file format it came from: low-rank pairs by module path."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx


@dataclass
class Adapter:
    name: str
    rank: int
    scale: float  # the trained scale; set_adapters multiplies it by the user's weight
    # Module path (e.g. "model.layers.3.self_attn.q_proj") -> (A: in x rank, B: rank x out); experts of a
    # mixture-of-experts layer have one pair each: (experts x in x rank, experts x rank x out).
    weights: dict[str, tuple[mx.array, mx.array]]
    dropout: float = 0.0
    num_layers: int | None = None
    keys: list[str] = field(default_factory=list)  # module names inside a layer ("self_attn.q_proj")
    base_model: str | None = None  # the model source it was made for
    base_fingerprint: str | None = None
    created: str | None = None
    training: dict | None = None  # a summary when the trainer left one
    format: str = "mlx-lm"  # or "peft"
    path: Path | None = None

    @property
    def layer_indices(self) -> list[int]:
        found = set()
        for module in self.weights:
            parts = module.split(".")
            if "layers" in parts:
                i = parts.index("layers")
                if i + 1 < len(parts) and parts[i + 1].isdigit():
                    found.add(int(parts[i + 1]))
        return sorted(found)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.weights.values())

    def delta(self, module: str) -> mx.array:
        """scale * (A B)^T: what this adapter adds to the module's (out x in) weight (per expert for a
        mixture-of-experts layer: (experts x out x in))."""
        a, b = self.weights[module]
        return (self.scale * b.swapaxes(-1, -2)) @ a.swapaxes(-1, -2)
