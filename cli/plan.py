"""`tierline plan`: where every tier's engines go, and what they cost."""

from __future__ import annotations

import json
from pathlib import Path

import typer
import yaml
from rich.console import Console
from rich.table import Table
from tierline.cli.validate import load_or_exit
from tierline.cluster.inventory import (
    Inventory,
    InventoryError,
    inventory_from_live_cluster,
    load_inventory,
)
from tierline.cluster.planner import InfeasiblePlanError, Plan, apply_plan, plan_cluster
from tierline.cluster.sizing import ModelSize, model_size, read_checkpoint_config, tier_cost
from tierline.cluster.spec import ClusterSpec
from tierline.cluster.specfile import spec_to_data

__all__ = ["plan", "plan_json", "render_plan"]

err = Console(stderr=True, soft_wrap=True)


def _sizes(spec: ClusterSpec) -> dict[str, ModelSize]:
    return {t.name: model_size(t, read_checkpoint_config(t)) for t in spec.engine_tiers}


def _nodes_text(placements: list[list[str]]) -> str:
    per_node: dict[str, int] = {}
    for bundle_nodes in placements:
        for node in bundle_nodes:
            per_node[node] = per_node.get(node, 0) + 1
    parts = [f"{n}:{c}" for n, c in per_node.items()]
    return ", ".join(parts[:4]) + (f", +{len(parts) - 4} nodes" if len(parts) > 4 else "")


def _money(value: float, derived: bool) -> str:
    return f"{value:.3f}{'*' if derived else ''}"


def render_plan(spec: ClusterSpec, plan: Plan, console: Console) -> None:
    """Rich tables: tiers (sizes, nodes, memory, cost), nodes, idle GPUs."""
    tiers = Table(title=f"plan for {spec.name}")
    for col in (
        "tier",
        "GPU",
        "TP x PP x replicas",
        "nodes: GPUs (CPU: replicas)",
        "GiB/GPU need/usable",
    ):
        tiers.add_column(col)
    for col in ("$/hour", "$/1M in", "$/1M out"):
        tiers.add_column(col, justify="right")
    any_derived = False
    for t in plan.tiers:
        tier = spec.tier(t.tier)
        cost = tier_cost(tier, t.gpus_per_replica, t.replicas)
        any_derived |= cost.input_derived or cost.output_derived
        size = f"{t.tensor_parallel_size} x {t.pipeline_parallel_size} x {t.replicas}" + (
            f" (of {t.max_replicas})" if t.max_replicas else ""
        )
        tiers.add_row(
            t.tier,
            t.gpu_type or "CPU",
            size,
            _nodes_text(
                [p.bundle_nodes if t.gpu_type else p.bundle_nodes[:1] for p in t.placements]
            ),
            f"{t.memory_per_gpu_gib:.1f} / {t.usable_gpu_memory_gib:.1f}" if t.gpu_type else "-",
            "-" if cost.usd_per_hour is None else f"{cost.usd_per_hour:.2f}",
            _money(cost.input_per_1m, cost.input_derived),
            _money(cost.output_per_1m, cost.output_derived),
        )
    console.print(tiers)
    nodes = Table(title="nodes")
    for col in ("node", "GPU", "GPUs used", "idle", "CPUs used"):
        nodes.add_column(col)
    shown = [n for n in plan.nodes if n.gpus] or plan.nodes
    for n in shown[:32]:
        nodes.add_row(
            n.node,
            n.gpu_type or "-",
            f"{n.gpus_used}/{n.gpus}",
            str(n.gpus_idle),
            f"{n.cpus_used:g}/{n.cpus:g}",
        )
    if len(shown) > 32:
        nodes.add_row(f"... {len(shown) - 32} more", "", "", "", "")
    console.print(nodes)
    console.print(f"GPUs left idle: [bold]{plan.idle_gpus}[/] of {plan.total_gpus}")
    if any_derived:
        console.print("* derived: gpus x gpu_hour_price_usd / (measured tokens/s x 3600) x 1e6")
    for w in plan.warnings:
        console.print(f"[yellow]warning[/]: {w}")


def plan_json(spec: ClusterSpec, plan: Plan) -> dict:
    data = plan.model_dump(mode="json")
    for t in data["tiers"]:
        cost = tier_cost(spec.tier(t["tier"]), t["gpus_per_replica"], t["replicas"])
        t["cost"] = {
            "usd_per_hour": cost.usd_per_hour,
            "price_per_1m_input_tokens": cost.input_per_1m,
            "price_per_1m_output_tokens": cost.output_per_1m,
            "input_price_derived": cost.input_derived,
            "output_price_derived": cost.output_derived,
        }
    return data


def _inventory(path: Path | None, from_cluster: bool, address: str | None) -> Inventory:
    if (path is None) == (not from_cluster):
        err.print("[red]give exactly one of --inventory or --from-cluster[/]")
        raise typer.Exit(2)
    try:
        if path is not None:
            return load_inventory(path)
        return inventory_from_live_cluster(address)
    except InventoryError as e:
        err.print(f"[bold red]{e.source}[/]: inventory error")
        for p in e.problems:
            err.print(f"  [red]✗[/] {p}", highlight=False)
        raise typer.Exit(1) from None
    except ConnectionError as e:
        err.print(f"[red]cannot reach a Ray cluster[/]: {e}")
        raise typer.Exit(1) from None


def plan(
    spec_path: Path = typer.Argument(..., help="Spec file.", show_default=False),
    inventory: Path | None = typer.Option(None, "--inventory", help="Inventory YAML."),
    from_cluster: bool = typer.Option(False, "--from-cluster", help="Read the live Ray cluster."),
    address: str | None = typer.Option(None, "--address", help="Ray address for --from-cluster."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    write_spec: Path | None = typer.Option(
        None, "--write-spec", help="Also write the spec with the planned sizes to this file."
    ),
) -> None:
    """Plan tensor/pipeline sizes, replicas and node placement of every tier."""
    spec = load_or_exit(spec_path)
    inv = _inventory(inventory, from_cluster, address)
    try:
        result = plan_cluster(spec.engine_tiers, inv, _sizes(spec))
    except InfeasiblePlanError as e:
        err.print(f"[bold red]{spec_path}[/]: does not fit ({len(e.issues)} problem(s))")
        for issue in e.issues:
            err.print(f"  [red]✗[/] {issue}", highlight=False)
        raise typer.Exit(1) from None
    if write_spec is not None:
        data = spec_to_data(apply_plan(spec, result))
        write_spec.write_text(yaml.safe_dump(data, sort_keys=False))
    if as_json:
        typer.echo(json.dumps(plan_json(spec, result), indent=2))
    else:
        render_plan(spec, result, Console(width=160))
