"""Placement planning: tiers + inventory -> tensor/pipeline sizes, replicas and node bundles.

`plan_cluster` is a pure function of plain data. For every tier it picks

- the tensor parallel size: the smallest power of two that divides a node's GPU count and
  lets weights plus the KV-cache budget fit in each GPU's usable memory with headroom;
- the pipeline parallel size: above 1 only when no single node can hold the model;
- the replicas: the spec's count (or its autoscaling minimum), then autoscaling headroom up
  to `max_replicas`, then, for tiers that fix neither, as many as the idle GPUs take;

and packs the replicas onto nodes best-fit, largest groups first, so GPUs are not stranded.
Sizes a spec sets explicitly are checked, never overridden. A spec that cannot be placed
raises `InfeasiblePlanError`, whose issues say what does not fit, where, and by how much.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from tierline.cluster.inventory import Inventory
from tierline.cluster.packing import Packer, PoolKey, StageNeed
from tierline.cluster.sizing import ModelSize, model_size
from tierline.cluster.spec import ClusterSpec, TierSpec

__all__ = [
    "InfeasiblePlanError",
    "NodeUsage",
    "Plan",
    "PlanIssue",
    "PlanOptions",
    "ReplicaPlacement",
    "TierPlan",
    "apply_plan",
    "choose_sizes",
    "engine_placement",
    "plan_cluster",
]

REPLICA_ACTOR_CPUS = 1.0  # Ray Serve LLM adds the replica actor's CPU to the first bundle
VLLM_CPU_KVCACHE_DEFAULT_GIB = 4.0


@dataclass(frozen=True)
class PlanOptions:
    """Headroom the planner leaves; the defaults suit vLLM on data-centre GPUs."""

    gpu_memory_utilization: float = 0.90  # vLLM's default, unless engine_kwargs set one
    activation_gib_per_gpu: float = 1.5  # activations, CUDA graphs, NCCL buffers
    kv_full_sequences: int = 1  # KV cache for this many max-length sequences at least
    fill_idle_gpus: bool = True  # tiers without replicas/autoscaling take idle GPUs


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PlanIssue(_Out):
    tier: str = Field(description="The tier that does not fit.")
    what: str = Field(description="What does not fit.")
    where: str = Field(description="Where it was tried.")
    short_by: str = Field(description="By how much it misses.")

    def __str__(self) -> str:
        return f"tier {self.tier!r}: {self.what}; {self.where}; short by {self.short_by}"


class InfeasiblePlanError(ValueError):
    def __init__(self, issues: Sequence[PlanIssue]) -> None:
        self.issues = list(issues)
        super().__init__("spec does not fit the inventory:\n" + "\n".join(f"  {i}" for i in issues))


PlacementKind = Literal["required", "autoscaling", "fill"]


class ReplicaPlacement(_Out):
    kind: PlacementKind = Field(
        description="required: the spec's count; autoscaling: headroom to max_replicas; "
        "fill: extra replicas on idle GPUs."
    )
    bundle_nodes: list[str] = Field(description="Node of each engine bundle, in bundle order.")


class TierPlan(_Out):
    tier: str
    gpu_type: str | None = Field(description="GPU type, or None for a CPU tier.")
    tensor_parallel_size: int
    pipeline_parallel_size: int
    replicas: int = Field(description="Replicas placed (required + autoscaling + fill).")
    required_replicas: int
    max_replicas: int | None = Field(description="Autoscaling upper bound, if autoscaling.")
    gpus_per_replica: int
    memory_per_gpu_gib: float = Field(description="Weights + KV budget + overhead per GPU.")
    usable_gpu_memory_gib: float = Field(description="GPU memory times gpu_memory_utilization.")
    size_source: str = Field(description="Where the model size came from.")
    placement_group: dict[str, Any] = Field(
        description="LLMConfig.placement_group_config: engine bundles and strategy."
    )
    placements: list[ReplicaPlacement]
    notes: list[str] = Field(default_factory=list)

    @property
    def gpus(self) -> int:
        return self.gpus_per_replica * self.replicas


class NodeUsage(_Out):
    node: str
    gpu_type: str | None
    gpus: int
    gpus_used: int
    cpus: float
    cpus_used: float

    @property
    def gpus_idle(self) -> int:
        return self.gpus - self.gpus_used


class Plan(_Out):
    tiers: list[TierPlan]
    nodes: list[NodeUsage]
    total_gpus: int
    idle_gpus: int
    warnings: list[str] = Field(default_factory=list)

    def tier(self, name: str) -> TierPlan:
        return next(t for t in self.tiers if t.tier == name)


def engine_placement(tier: TierSpec, tp: int | None = None, pp: int | None = None) -> dict:
    """`LLMConfig.placement_group_config` for one replica of `tier` at TP `tp` x PP `pp`.

    GPU tiers get one GPU bundle per worker; a TP group inside one node is STRICT_PACK,
    a pipeline across nodes is PACK (each stage fills a node before the next). CPU tiers
    get one CPU bundle. Ray Serve LLM adds the accelerator type and the replica actor's
    CPU to these bundles itself.
    """
    if not tier.uses_gpu:
        return {"bundles": [{"CPU": tier.cpus_per_replica}]}
    tp = tier.tensor_parallel_size if tp is None else tp
    pp = tier.pipeline_parallel_size if pp is None else pp
    return {
        "bundles": [{"GPU": 1.0} for _ in range(tp * pp)],
        "strategy": "STRICT_PACK" if pp == 1 else "PACK",
    }


@dataclass(frozen=True)
class _Sizing:
    tp: int
    pp: int
    per_gpu_gib: float
    usable_gib: float
    pools: tuple[PoolKey, ...]
    note: str | None = None


def _per_gpu_gib(size: ModelSize, tier: TierSpec, gpus: int, opts: PlanOptions) -> float:
    if not size.known:
        return opts.activation_gib_per_gpu
    kv = size.kv_gib(tier.max_context_tokens * opts.kv_full_sequences)
    return (size.weights_gib + kv) / gpus + opts.activation_gib_per_gpu


def _utilization(tier: TierSpec, opts: PlanOptions) -> float:
    return float(tier.engine_kwargs.get("gpu_memory_utilization", opts.gpu_memory_utilization))


def choose_sizes(
    tier: TierSpec, size: ModelSize, pools: Mapping[PoolKey, int], opts: PlanOptions
) -> _Sizing | PlanIssue:
    """TP and PP for a GPU tier over `pools` (node shape -> node count) of its GPU type.

    Tries pipeline sizes from 1 up (PP stages sit on distinct nodes) and, for each, tensor
    sizes from the smallest power of two up; the first that fits wins.
    """
    util = _utilization(tier, opts)
    explicit = tier.model_fields_set
    fixed_tp = tier.tensor_parallel_size if "tensor_parallel_size" in explicit else None
    fixed_pp = tier.pipeline_parallel_size if "pipeline_parallel_size" in explicit else None
    max_gpus = max(k[1] for k in pools)
    if fixed_tp is not None and not any(k[1] % fixed_tp == 0 for k in pools):
        shapes = ", ".join(sorted({str(k[1]) for k in pools}))
        return PlanIssue(
            tier=tier.name,
            what=f"tensor_parallel_size {fixed_tp} does not divide a node's GPU count",
            where=f"{tier.accelerator_type} nodes have {shapes} GPUs",
            short_by=f"{fixed_tp - max_gpus} GPUs per node"
            if fixed_tp > max_gpus
            else "an even split: use a power of two that divides the node's GPUs",
        )
    tps = [fixed_tp] if fixed_tp else [1 << i for i in range(max_gpus.bit_length())]
    n_nodes = sum(pools.values())
    pps = [fixed_pp] if fixed_pp else list(range(1, n_nodes + 1))
    if not size.known:
        pps = pps[:1]
    miss: tuple[float, int, int, float] | None = None  # (GiB over, tp, pp, usable)
    for pp in pps:
        for tp in tps:
            ok = [k for k, n in pools.items() if k[1] % tp == 0]
            if not ok:
                continue
            if sum(pools[k] for k in ok) < pp:
                if miss is None:
                    miss = (float("inf"), tp, pp, 0.0)
                continue
            need = _per_gpu_gib(size, tier, tp * pp, opts)
            fits = tuple(k for k in ok if need <= k[2] * util + 1e-9)
            if fits and (pp == 1 or sum(pools[k] for k in fits) >= pp):
                note = None if size.known else "model size unknown: memory not checked"
                return _Sizing(tp, pp, need, max(k[2] for k in fits) * util, fits, note)
            usable = max(k[2] for k in ok) * util
            if miss is None or need - usable < miss[0]:
                miss = (need - usable, tp, pp, usable)
    assert miss is not None
    over, tp, pp, usable = miss
    if over == float("inf"):
        return PlanIssue(
            tier=tier.name,
            what=f"pipeline_parallel_size {pp} needs {pp} {tier.accelerator_type} nodes",
            where=f"the inventory has {n_nodes} {tier.accelerator_type} node(s)",
            short_by=f"{pp - n_nodes} node(s)",
        )
    kv = size.kv_gib(tier.max_context_tokens * opts.kv_full_sequences)
    return PlanIssue(
        tier=tier.name,
        what=f"model needs {size.weights_gib:.1f} GiB of weights + {kv:.1f} GiB of KV cache "
        f"({tier.max_context_tokens} tokens)",
        where=f"at TP{tp} x PP{pp} each {tier.accelerator_type} GPU needs "
        f"{usable + over:.1f} GiB and has {usable:.1f} GiB usable",
        short_by=f"{over:.1f} GiB per GPU",
    )


@dataclass
class _Group:
    """One tier's replicas as the packer sees them."""

    tier: TierSpec
    stage: StageNeed  # every stage of a replica asks the same of its node
    pp: int
    pools: tuple[PoolKey, ...]
    placements: list[ReplicaPlacement]
    first_stage_cpus: float = REPLICA_ACTOR_CPUS

    @property
    def gpus(self) -> int:
        return self.stage.gpus * self.pp


def _place_one(packer: Packer, g: _Group, kind: PlacementKind) -> bool:
    """Place one replica of `g` (all its stages on distinct nodes) or nothing."""
    taken: list[tuple[int, StageNeed]] = []
    for s in range(g.pp):
        need = g.stage
        if s == 0:
            need = StageNeed(need.gpus, need.cpus + g.first_stage_cpus, need.memory_gib)
        used = [i for i, _ in taken]
        if g.tier.uses_gpu:
            node = packer.best_gpu_node(g.pools, need, used, most_free=g.pp > 1)
        else:
            node = packer.best_cpu_node(need, used)
        if node is None:
            for i, n in taken:
                packer.give(i, n)
            return False
        packer.take(node, need)
        taken.append((node, need))
    names = [packer.nodes[i].name for i, _ in taken]
    per_stage = max(g.stage.gpus, 1)
    g.placements.append(
        ReplicaPlacement(kind=kind, bundle_nodes=[n for n in names for _ in range(per_stage)])
    )
    return True


def _shortfall(packer: Packer, g: _Group, missing: int, wanted: int) -> PlanIssue:
    t = g.tier
    if t.uses_gpu:
        block, node = packer.largest_free_block(g.pools)
        free = packer.free_in(g.pools)
        where = (
            f"{t.accelerator_type} nodes have {free} GPU(s) free, at most {block} on one node"
            + (f" ({node})" if node else "")
        )
        return PlanIssue(
            tier=t.name,
            what=f"{missing} of {wanted} replica(s) of TP{g.stage.gpus} x PP{g.pp} "
            f"({g.gpus} GPU(s) each) do not fit",
            where=where,
            short_by=f"{missing * g.gpus} GPU(s)",
        )
    most_cpu = max(packer.free_cpus, default=0.0)
    most_mem = max(packer.free_mem, default=0.0)
    need_cpu = g.stage.cpus + g.first_stage_cpus
    return PlanIssue(
        tier=t.name,
        what=f"{missing} of {wanted} CPU replica(s) ({need_cpu:g} CPUs, "
        f"{g.stage.memory_gib:.1f} GiB each) do not fit",
        where=f"the freest node has {most_cpu:g} CPUs and {most_mem:.1f} GiB free",
        short_by=f"{missing * need_cpu:g} CPUs"
        if most_cpu < need_cpu
        else f"{missing * g.stage.memory_gib:.1f} GiB of memory",
    )


def _cpu_memory_gib(tier: TierSpec, size: ModelSize) -> float:
    kv = tier.env_vars.get("VLLM_CPU_KVCACHE_SPACE")
    try:
        kv_gib = float(kv) if kv is not None else VLLM_CPU_KVCACHE_DEFAULT_GIB
    except ValueError:
        kv_gib = VLLM_CPU_KVCACHE_DEFAULT_GIB
    return size.weights_gib + kv_gib


def _wanted(tier: TierSpec) -> tuple[int, int, bool]:
    """(required replicas, autoscaling headroom, fills idle GPUs)."""
    if tier.autoscaling is not None:
        low = max(tier.autoscaling.min_replicas, 1)
        return low, max(tier.autoscaling.max_replicas - low, 0), False
    if tier.replicas is not None:
        return tier.replicas, 0, False
    return 1, 0, tier.uses_gpu


def plan_cluster(
    tiers: Sequence[TierSpec],
    inventory: Inventory,
    sizes: Mapping[str, ModelSize] | None = None,
    options: PlanOptions | None = None,
) -> Plan:
    """Plan every tier onto the inventory; raises InfeasiblePlanError listing what misses.

    `sizes` maps tier names to model sizes read elsewhere (a checkpoint's config.json);
    tiers not in it are sized from the spec's `params_b`/`dtype`.
    """
    opts = options or PlanOptions()
    packer = Packer(inventory.nodes)
    issues: list[PlanIssue] = []
    warnings: list[str] = []
    groups: list[_Group] = []
    sizings: dict[str, _Sizing | None] = {}
    msizes: dict[str, ModelSize] = {}
    shapes: dict[str, dict[PoolKey, int]] = {}
    for node in inventory.nodes:
        if node.gpus and node.gpu_type:
            by = shapes.setdefault(node.gpu_type.lower(), {})
            key = (node.gpu_type.lower(), node.gpus, node.gpu_memory_gib)
            by[key] = by.get(key, 0) + 1
    for tier in tiers:
        size = (sizes or {}).get(tier.name) or model_size(tier)
        msizes[tier.name] = size
        if not tier.uses_gpu:
            sizings[tier.name] = None
            stage = StageNeed(0, tier.cpus_per_replica, _cpu_memory_gib(tier, size))
            groups.append(_Group(tier, stage, 1, (), []))
            continue
        accel = str(tier.accelerator_type)
        pools = shapes.get(accel.lower())
        if not pools:
            have = ", ".join(f"{t} x{n}" for t, n in inventory.gpu_types().items()) or "none"
            issues.append(
                PlanIssue(
                    tier=tier.name,
                    what=f"needs {accel} GPUs",
                    where=f"the inventory has no {accel} node (GPUs: {have})",
                    short_by=f"{accel} nodes",
                )
            )
            continue
        sizing = choose_sizes(tier, size, pools, opts)
        if isinstance(sizing, PlanIssue):
            issues.append(sizing)
            continue
        sizings[tier.name] = sizing
        if sizing.note:
            warnings.append(f"tier {tier.name!r}: {sizing.note}")
        groups.append(_Group(tier, StageNeed(sizing.tp, 0.0), sizing.pp, sizing.pools, []))

    order = sorted(groups, key=lambda g: (-g.gpus, -g.pp, -g.stage.cpus))
    for g in order:  # what the spec asks for, biggest groups first
        required = _wanted(g.tier)[0]
        placed = sum(_place_one(packer, g, "required") for _ in range(required))
        if placed < required:
            issues.append(_shortfall(packer, g, required - placed, required))
    if issues:
        raise InfeasiblePlanError(issues)
    for g in order:  # autoscaling headroom up to max_replicas
        extra = _wanted(g.tier)[1]
        placed = 0
        while placed < extra and _place_one(packer, g, "autoscaling"):
            placed += 1
        if placed < extra:
            warnings.append(
                f"tier {g.tier.name!r}: autoscaling max_replicas "
                f"{g.tier.autoscaling.max_replicas if g.tier.autoscaling else 0} does not fit; "
                f"room for {len(g.placements)} replica(s), {extra - placed} x {g.gpus} GPU(s) short"
            )
    if opts.fill_idle_gpus:
        fill = [g for g in order if _wanted(g.tier)[2]]
        while fill:  # round robin, biggest first, until no tier's replica fits anywhere
            fill = [g for g in fill if _place_one(packer, g, "fill")]
    return _assemble(tiers, groups, sizings, msizes, packer, warnings)


def _assemble(
    tiers: Sequence[TierSpec],
    groups: Sequence[_Group],
    sizings: Mapping[str, _Sizing | None],
    msizes: Mapping[str, ModelSize],
    packer: Packer,
    warnings: list[str],
) -> Plan:
    by_name = {g.tier.name: g for g in groups}
    out: list[TierPlan] = []
    for tier in tiers:
        g = by_name[tier.name]
        s = sizings[tier.name]
        tp, pp = (s.tp, s.pp) if s else (1, 1)
        out.append(
            TierPlan(
                tier=tier.name,
                gpu_type=tier.accelerator_type,
                tensor_parallel_size=tp,
                pipeline_parallel_size=pp,
                replicas=len(g.placements),
                required_replicas=_wanted(tier)[0],
                max_replicas=tier.autoscaling.max_replicas if tier.autoscaling else None,
                gpus_per_replica=g.gpus,
                memory_per_gpu_gib=round(s.per_gpu_gib, 2) if s else 0.0,
                usable_gpu_memory_gib=round(s.usable_gib, 2) if s else 0.0,
                size_source=msizes[tier.name].source,
                placement_group=engine_placement(tier, tp, pp),
                placements=g.placements,
                notes=[s.note] if s and s.note else [],
            )
        )
    nodes = [
        NodeUsage(
            node=n.name,
            gpu_type=n.gpu_type,
            gpus=n.gpus,
            gpus_used=n.gpus - packer.free_gpus[i],
            cpus=n.cpus,
            cpus_used=round(n.cpus - packer.free_cpus[i], 3),
        )
        for i, n in enumerate(packer.nodes)
    ]
    total = sum(n.gpus for n in nodes)
    return Plan(
        tiers=out,
        nodes=nodes,
        total_gpus=total,
        idle_gpus=total - sum(n.gpus_used for n in nodes),
        warnings=warnings,
    )


def apply_plan(spec: ClusterSpec, plan: Plan) -> ClusterSpec:
    """The spec with the plan's sizes written in: what `render serve` and `up` then deploy.

    Fixed-replica tiers get the planned replica count; autoscaling tiers keep their bounds.
    """
    tiers = []
    for tier in spec.tiers:
        if tier.is_external:  # served outside the cluster: nothing to place
            tiers.append(tier)
            continue
        tp = plan.tier(tier.name)
        update: dict[str, Any] = {
            "tensor_parallel_size": tp.tensor_parallel_size,
            "pipeline_parallel_size": tp.pipeline_parallel_size,
        }
        if tier.autoscaling is None:
            update["replicas"] = tp.replicas
        tiers.append(tier.model_copy(update=update))
    return spec.model_copy(update={"tiers": tiers})
