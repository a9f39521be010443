"""Planner benchmark: 1,024 nodes x 8 GPUs, 50 tiers. Target: one plan in <= 1 s.

Writes bench/results/plan.json. Run with `make bench-plan` (or `.venv/bin/python -m
bench.plan_bench`). Each scenario is planned `--repeats` times; the median is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tierline.cluster.inventory import Inventory, NodeInventory
from tierline.cluster.planner import plan_cluster
from tierline.cluster.spec import TierSpec

ROOT = Path(__file__).resolve().parents[1]

MODELS = [  # (params_b, dtype, context tokens)
    (1.0, "bfloat16", 8192),
    (3.0, "bfloat16", 8192),
    (8.0, "bfloat16", 32768),
    (14.0, "bfloat16", 32768),
    (32.0, "bfloat16", 32768),
    (70.0, "bfloat16", 65536),
    (70.0, "fp8", 32768),
    (405.0, "fp8", 32768),
    (405.0, "bfloat16", 16384),
]


def fleet(nodes: int, mixed: bool) -> Inventory:
    kinds = [("H100", 8, 80.0)]
    if mixed:
        kinds += [("A100-80G", 8, 80.0), ("L4", 4, 24.0)]
    return Inventory(
        nodes=[
            NodeInventory(
                name=f"node-{i:04d}",
                gpus=kinds[i % len(kinds)][1],
                gpu_type=kinds[i % len(kinds)][0],
                gpu_memory_gib=kinds[i % len(kinds)][2],
                cpus=128,
                memory_gib=1024,
            )
            for i in range(nodes)
        ]
    )


def tiers(n: int, mixed: bool) -> list[TierSpec]:
    types = ["H100", "A100-80G"] if mixed else ["H100"]
    out = []
    for i in range(n):
        params_b, dtype, ctx = MODELS[i % len(MODELS)]
        kw: dict[str, Any] = {
            "name": f"tier-{i:02d}",
            "model_source": f"org/model-{i}",
            "accelerator_type": types[i % len(types)],
            "params_b": params_b,
            "dtype": dtype,
            "max_context_tokens": ctx,
        }
        if mixed and params_b <= 3.0 and i % 2:
            kw["accelerator_type"] = "L4"
        mode = i % 5
        if mode in (0, 1, 2):
            kw["replicas"] = 2 + i % 7
        elif mode == 3:
            kw["autoscaling"] = {"min_replicas": 1, "max_replicas": 4 + i % 9}
        # mode 4: neither: the tier takes idle GPUs
        out.append(TierSpec.model_validate(kw))
    return out


def run(nodes: int, n_tiers: int, mixed: bool, repeats: int) -> dict[str, Any]:
    inv = fleet(nodes, mixed)
    ts = tiers(n_tiers, mixed)
    times = []
    plan = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        plan = plan_cluster(ts, inv)
        times.append(time.perf_counter() - t0)
    assert plan is not None
    return {
        "scenario": f"{nodes} nodes, {'mixed H100/A100/L4' if mixed else '8 x H100'}, "
        f"{n_tiers} tiers",
        "nodes": nodes,
        "gpus": inv.total_gpus,
        "tiers": n_tiers,
        "replicas_placed": sum(t.replicas for t in plan.tiers),
        "idle_gpus": plan.idle_gpus,
        "plan_s_median": round(statistics.median(times), 4),
        "plan_s_min": round(min(times), 4),
        "plan_s_max": round(max(times), 4),
        "repeats": repeats,
        "target_s": 1.0,
        "meets_target": statistics.median(times) <= 1.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=1024)
    parser.add_argument("--tiers", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "plan.json")
    args = parser.parse_args()
    results = [run(args.nodes, args.tiers, mixed, args.repeats) for mixed in (False, True)]
    report = {
        "benchmark": "plan_cluster",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for r in results:
        print(
            f"{r['scenario']}: {r['plan_s_median']:.3f} s median "
            f"({r['replicas_placed']} replicas, {r['idle_gpus']} of {r['gpus']} GPUs idle)"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
