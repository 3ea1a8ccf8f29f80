"""Data parallel training with mx.distributed (processes started by `mlx.launch`).

Every rank builds the same global batch, keeps its share of the rows, and the loss sums, token
counts and gradients are summed across ranks before the update. Dividing by the global token count
makes N ranks compute exactly what one rank computes on the whole batch. Only rank 0 writes files
and reports progress.
"""

from __future__ import annotations

import mlx.core as mx
from mlx.utils import tree_map


class Group:
    def __init__(self):
        # Without mlx.launch this is a group of one, and every call below is a no-op.
        self.group = mx.distributed.init() if mx.distributed.is_available() else None
        self.size = self.group.size() if self.group is not None else 1
        self.rank = self.group.rank() if self.group is not None else 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, tree):
        if self.size == 1:
            return tree
        return tree_map(lambda x: mx.distributed.all_sum(x, group=self.group), tree)

    def share(self, rows: list) -> list:
        """This rank's rows of a global batch."""
        return rows[self.rank::self.size]

    def barrier(self) -> None:
        if self.size > 1:
            mx.eval(mx.distributed.all_sum(mx.array(1.0), group=self.group))
