"""RowCaches: one layer's caches of several sequences decoded together, one row of the batch each.

Batched decode (the server's concurrent requests) runs the projections and MLPs of all sequences in one pass,
reading each weight once for all of them; attention stays per sequence, each against its own cache of its own
length (`models.attention` splits the rows), so no padding or masks are needed.
"""

from __future__ import annotations

from dataclasses import dataclass

from macllm.cache.base import LayerCache


@dataclass
class RowCaches:
    rows: list[LayerCache]  # row i of the batch attends to and appends to rows[i]


def row_caches(caches: list[list[LayerCache]]) -> list[RowCaches]:
    """Per-sequence cache lists (sequence -> layer) -> one RowCaches per layer, for a batched forward."""
    return [RowCaches([seq[layer] for seq in caches]) for layer in range(len(caches[0]))]
