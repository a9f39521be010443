"""What a cluster has to offer: nodes with their GPUs, CPUs and memory.

An inventory comes from a YAML file (`nodes: [{name, gpus, gpu_type, gpu_memory_gib, cpus,
memory_gib}]`) or from a live Ray cluster's node table. Turning Ray's node table into an
`Inventory` is a pure function (`inventory_from_ray_nodes`), so it is tested on plain data;
only `inventory_from_live_cluster` talks to Ray.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from tierline.cluster.specfile import format_loc

__all__ = [
    "ACCELERATOR_RESOURCE_PREFIX",
    "GPU_MEMORY_GIB_BY_TYPE",
    "NODE_LABEL",
    "Inventory",
    "InventoryError",
    "NodeInventory",
    "inventory_from_live_cluster",
    "inventory_from_ray_nodes",
    "load_inventory",
    "parse_inventory",
    "ray_node_name",
]

# Ray advertises a node's GPU model as the resource `accelerator_type:<type>`.
ACCELERATOR_RESOURCE_PREFIX = "accelerator_type:"
# Node label tierline reads a node's name from (start Ray with `--labels tierline.io/node=x`);
# without it a node is named by its IP address and a short node id.
NODE_LABEL = "tierline.io/node"
# Ray's node table does not say how much memory a GPU has; these are the common models.
GPU_MEMORY_GIB_BY_TYPE: dict[str, float] = {
    "H200": 141.0,
    "H100": 80.0,
    "H20": 96.0,
    "A100-80G": 80.0,
    "A100-40G": 40.0,
    "A100": 40.0,
    "L40S": 48.0,
    "L40": 48.0,
    "L4": 24.0,
    "A10G": 24.0,
    "T4": 16.0,
    "V100": 16.0,
    "B200": 180.0,
    "GB200": 186.0,
}
_GIB = float(1 << 30)


class NodeInventory(BaseModel):
    """One node: how many GPUs of which model, and its CPUs and host memory."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="Node name, unique in the inventory.")
    gpus: int = Field(0, ge=0, description="Number of GPUs on the node.")
    gpu_type: str | None = Field(
        None, description="Ray accelerator type of the GPUs (H100, A100-80G, L4, ...)."
    )
    gpu_memory_gib: float = Field(0.0, ge=0, description="Memory of one GPU, GiB.")
    cpus: float = Field(gt=0, description="Logical CPUs Ray may schedule on the node.")
    memory_gib: float = Field(gt=0, description="Host memory, GiB.")

    @model_validator(mode="after")
    def _gpu_fields(self) -> NodeInventory:
        if self.gpus > 0 and (self.gpu_type is None or self.gpu_memory_gib <= 0):
            raise ValueError("a node with gpus needs gpu_type and gpu_memory_gib")
        return self


class Inventory(BaseModel):
    """All nodes of a cluster."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nodes: list[NodeInventory] = Field(min_length=1, description="The cluster's nodes.")

    @model_validator(mode="after")
    def _unique_names(self) -> Inventory:
        seen: set[str] = set()
        for node in self.nodes:
            if node.name in seen:
                raise ValueError(f"node name {node.name!r} appears twice")
            seen.add(node.name)
        return self

    @property
    def total_gpus(self) -> int:
        return sum(n.gpus for n in self.nodes)

    def gpu_types(self) -> dict[str, int]:
        """GPU count per GPU type."""
        out: dict[str, int] = {}
        for n in self.nodes:
            if n.gpus and n.gpu_type is not None:
                out[n.gpu_type] = out.get(n.gpu_type, 0) + n.gpus
        return out


class InventoryError(ValueError):
    """An inventory file that cannot be read or does not validate."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__(f"{source}: " + "; ".join(self.problems))


def parse_inventory(data: Any, source: str = "<inventory>") -> Inventory:
    if not isinstance(data, dict):
        raise InventoryError(source, ["an inventory must be a YAML mapping with a 'nodes' list"])
    try:
        return Inventory.model_validate(data)
    except ValidationError as err:
        problems = [
            f"{format_loc(e['loc']) or '<root>'}: {e['msg'].removeprefix('Value error, ')}"
            for e in err.errors(include_url=False)
        ]
        raise InventoryError(source, problems) from None


def load_inventory(path: str | Path) -> Inventory:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as err:
        raise InventoryError(str(p), [f"cannot read: {err.strerror}"]) from None
    except yaml.YAMLError as err:
        raise InventoryError(str(p), [f"not valid YAML: {err}"]) from None
    return parse_inventory(data, str(p))


def ray_node_name(node: Mapping[str, Any]) -> str:
    """A Ray node's name: its `tierline.io/node` label, else its IP and short node id."""
    labels = node.get("Labels") or {}
    if labels.get(NODE_LABEL):
        return str(labels[NODE_LABEL])
    ip = str(node.get("NodeManagerAddress") or "node")
    return f"{ip}-{str(node.get('NodeID', ''))[:8]}".rstrip("-")


def inventory_from_ray_nodes(
    nodes: Sequence[Mapping[str, Any]], gpu_memory_gib: Mapping[str, float] | None = None
) -> Inventory:
    """Turn `ray.nodes()` output into an inventory: alive nodes only.

    `gpu_memory_gib` maps GPU types to their memory where the built-in table has no entry
    (or should be overridden).
    """
    memory_table = {**GPU_MEMORY_GIB_BY_TYPE, **(gpu_memory_gib or {})}
    out: list[NodeInventory] = []
    for node in nodes:
        if not node.get("Alive", False):
            continue
        res: Mapping[str, float] = node.get("Resources") or {}
        gpus = int(res.get("GPU", 0))
        types = sorted(
            k.removeprefix(ACCELERATOR_RESOURCE_PREFIX)
            for k in res
            if k.startswith(ACCELERATOR_RESOURCE_PREFIX)
        )
        gpu_type = types[0] if types else ("GPU" if gpus else None)
        mem = memory_table.get(gpu_type or "", 0.0) if gpus else 0.0
        if gpus and mem <= 0:
            raise InventoryError(
                ray_node_name(node),
                [f"unknown memory of GPU type {gpu_type!r}: pass it in gpu_memory_gib"],
            )
        out.append(
            NodeInventory(
                name=ray_node_name(node),
                gpus=gpus,
                gpu_type=gpu_type if gpus else None,
                gpu_memory_gib=mem,
                cpus=max(float(res.get("CPU", 0.0)), 1e-3),
                memory_gib=max(float(res.get("memory", 0.0)) / _GIB, 1e-3),
            )
        )
    if not out:
        raise InventoryError("ray cluster", ["no alive nodes"])
    return Inventory(nodes=out)


def inventory_from_live_cluster(
    address: str | None = None, gpu_memory_gib: Mapping[str, float] | None = None
) -> Inventory:
    """Connect to a running Ray cluster (`address`, default: the local one) and read it."""
    import ray

    was_connected = ray.is_initialized()
    if not was_connected:
        ray.init(address=address or "auto", log_to_driver=False, configure_logging=False)
    try:
        return inventory_from_ray_nodes(ray.nodes(), gpu_memory_gib)
    finally:
        if not was_connected:
            ray.shutdown()
