"""Free-capacity bookkeeping for the planner: which node takes the next engine group.

Nodes are grouped into pools of identical hardware (GPU type, GPU count, GPU memory); in
each pool, nodes sit in buckets by free GPUs, so a best-fit search costs a few dict look-ups
rather than a scan of every node. Pure data, no Ray.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from tierline.cluster.inventory import NodeInventory

__all__ = ["Packer", "PoolKey", "StageNeed"]

PoolKey = tuple[str, int, float]  # (gpu_type, gpus per node, GiB per GPU)


@dataclass(frozen=True)
class StageNeed:
    """What one pipeline stage asks of one node."""

    gpus: int
    cpus: float
    memory_gib: float = 0.0


@dataclass
class _Pool:
    key: PoolKey
    # buckets[f] holds the nodes with f GPUs free, in inventory order (dict as ordered set)
    buckets: list[dict[int, None]] = field(default_factory=list)


class Packer:
    """Mutable free capacity of an inventory's nodes, with best-fit placement."""

    def __init__(self, nodes: Sequence[NodeInventory]) -> None:
        self.nodes = list(nodes)
        self.free_gpus = [n.gpus for n in nodes]
        self.free_cpus = [n.cpus for n in nodes]
        self.free_mem = [n.memory_gib for n in nodes]
        self._pools: dict[PoolKey, _Pool] = {}
        self._pool_of: list[_Pool | None] = []
        for i, n in enumerate(nodes):
            if n.gpus == 0 or n.gpu_type is None:
                self._pool_of.append(None)
                continue
            key = (n.gpu_type.lower(), n.gpus, n.gpu_memory_gib)
            pool = self._pools.get(key)
            if pool is None:
                pool = _Pool(key, [{} for _ in range(n.gpus + 1)])
                self._pools[key] = pool
            pool.buckets[n.gpus][i] = None
            self._pool_of.append(pool)

    def pools(self, gpu_type: str) -> list[PoolKey]:
        return [k for k in self._pools if k[0] == gpu_type.lower()]

    def take(self, i: int, need: StageNeed) -> None:
        self._move(i, -need.gpus)
        self.free_cpus[i] -= need.cpus
        self.free_mem[i] -= need.memory_gib

    def give(self, i: int, need: StageNeed) -> None:
        self._move(i, need.gpus)
        self.free_cpus[i] += need.cpus
        self.free_mem[i] += need.memory_gib

    def _move(self, i: int, delta: int) -> None:
        if delta == 0:
            return
        pool = self._pool_of[i]
        if pool is not None:
            del pool.buckets[self.free_gpus[i]][i]
            pool.buckets[self.free_gpus[i] + delta][i] = None
        self.free_gpus[i] += delta

    def _fits(self, i: int, need: StageNeed) -> bool:
        return self.free_cpus[i] >= need.cpus - 1e-9 and self.free_mem[i] >= need.memory_gib - 1e-9

    def best_gpu_node(
        self,
        pools: Sequence[PoolKey],
        need: StageNeed,
        exclude: Sequence[int] = (),
        most_free: bool = False,
    ) -> int | None:
        """The node with the fewest free GPUs that still takes `need` (None if none does).

        `most_free` picks the node with the most free GPUs instead: pipeline stages must sit
        on distinct nodes, and taking them from the emptiest nodes leaves the most nodes
        able to host later stages.
        """
        if most_free:
            return self._most_free(pools, need, exclude)
        best: tuple[int, int] | None = None
        for key in pools:
            pool = self._pools[key]
            top = len(pool.buckets) - 1
            limit = top if best is None else min(top, best[0] - 1)
            for free in range(need.gpus, limit + 1):
                found = next(
                    (i for i in pool.buckets[free] if i not in exclude and self._fits(i, need)),
                    None,
                )
                if found is not None:
                    best = (free, found)
                    break
        return None if best is None else best[1]

    def _most_free(
        self, pools: Sequence[PoolKey], need: StageNeed, exclude: Sequence[int]
    ) -> int | None:
        best: tuple[int, int] | None = None
        for key in pools:
            buckets = self._pools[key].buckets
            floor = need.gpus if best is None else max(need.gpus, best[0] + 1)
            for free in range(len(buckets) - 1, floor - 1, -1):
                found = next(
                    (i for i in buckets[free] if i not in exclude and self._fits(i, need)),
                    None,
                )
                if found is not None:
                    best = (free, found)
                    break
        return None if best is None else best[1]

    def best_cpu_node(self, need: StageNeed, exclude: Sequence[int] = ()) -> int | None:
        """The node with the fewest free CPUs that takes `need`, GPU-less nodes first."""
        best: tuple[bool, float, int] | None = None
        for i in range(len(self.nodes)):
            if i in exclude or not self._fits(i, need):
                continue
            cand = (self.nodes[i].gpus > 0, self.free_cpus[i], i)
            if best is None or cand < best:
                best = cand
        return None if best is None else best[2]

    def largest_free_block(self, pools: Sequence[PoolKey]) -> tuple[int, str | None]:
        """Most free GPUs on one node of these pools, and that node's name."""
        for free in range(max((len(self._pools[k].buckets) for k in pools), default=1) - 1, 0, -1):
            for key in pools:
                buckets = self._pools[key].buckets
                if free < len(buckets) and buckets[free]:
                    return free, self.nodes[next(iter(buckets[free]))].name
        return 0, None

    def free_in(self, pools: Sequence[PoolKey]) -> int:
        total = 0
        for key in pools:
            for free, bucket in enumerate(self._pools[key].buckets):
                total += free * len(bucket)
        return total
