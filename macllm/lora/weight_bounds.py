"""How strongly an adapter may be applied: the weight a user gives it (`-a NAME:SCALE`, `Engine.set_adapters`,
the app's blend keys), which multiplies the adapter's own trained scale.

1 is the strength it was trained at; blends use a few tenths to a few units, and a negative weight subtracts
an adapter's style. Past 10 the low-rank delta swamps the base weights and the model answers noise (1e9
overflows half precision to inf, then every answer is NaN), so the range is -10..10.
No MLX here: the CLI checks weights while parsing options, before any model is loaded.
"""

from __future__ import annotations

import math

MAX_ADAPTER_WEIGHT = 10.0


def weight_problem(weight: object) -> str | None:
    """Why `weight` cannot be an adapter's weight, or None when it can."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        return f"must be a finite number between -{MAX_ADAPTER_WEIGHT:g} and {MAX_ADAPTER_WEIGHT:g}, got {weight!r}"
    if abs(weight) > MAX_ADAPTER_WEIGHT:
        return (f"must be between -{MAX_ADAPTER_WEIGHT:g} and {MAX_ADAPTER_WEIGHT:g} (1 = as trained), "
                f"got {weight:g}")
    return None
