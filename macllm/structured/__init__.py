"""Constrained decoding: a JSON schema, "any JSON object" or a grammar turned into a per-step token mask.

The grammar engine is llguidance (chosen by measurement, docs/benchmarks.md "Grammar engines"). A `Constraint`
is compiled once and shared; each generation calls `constraint.start()` for its own `ConstraintState`, so
concurrent or repeated generations never share parser state.
"""

from macllm.structured.constraint import Constraint, ConstraintState, check_constraint, compile_constraint

__all__ = ["Constraint", "ConstraintState", "check_constraint", "compile_constraint"]
