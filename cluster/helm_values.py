"""Rendering a spec into values for the Helm chart (helm/tierline). Pure: spec in, data out.

The chart builds its RayService's `serveConfigV2` from the values' `spec` exactly as
`cluster.render.serve_config` does, so `tierline render helm-values SPEC` and
`tierline render serve SPEC` describe the same Serve application. Next to the spec the
values carry one Ray worker group per GPU shape (accelerator type), sized so that the
tiers' replicas fit: `minReplicas` pods for the tiers' lower bounds, `maxReplicas` for
their upper bounds; Ray's autoscaler moves between them.

`spec_values_schema` is the JSON schema of the values' `spec`, generated from the pydantic
models; the chart's values.schema.json embeds it, so a bad spec fails at `helm install`.
"""

from __future__ import annotations

import math
import re
from typing import Any

from tierline.cluster.spec import ClusterSpec, TierSpec

# Addresses that accept connections from the pod network; anything else (127.0.0.1)
# would leave the Serve proxy unreachable from the gateway Service.
WILDCARD_HOSTS = ("0.0.0.0", "::")
DEFAULT_GPUS_PER_NODE = 8
CPU_GROUP = "cpu"
SCHEMA_DEFINITIONS = "definitions"


class HelmValuesError(ValueError):
    """A spec that cannot run on Kubernetes as written; the message says what to change."""


def group_name(accelerator_type: str | None) -> str:
    """Worker group name of a GPU shape: `H100` -> `h100`, CPU tiers -> `cpu`."""
    if accelerator_type is None:
        return CPU_GROUP
    return re.sub(r"[^a-z0-9-]+", "-", accelerator_type.lower()).strip("-") or "gpu"


def _replica_bounds(tier: TierSpec) -> tuple[int, int]:
    if tier.autoscaling is not None:
        return tier.autoscaling.min_replicas, tier.autoscaling.max_replicas
    return tier.num_replicas, tier.num_replicas


def nodes_for(chunks: list[int], gpus_per_node: int) -> int:
    """Pods needed to hold GPU chunks (first fit decreasing). A chunk is one pipeline
    stage of one replica, `tensor_parallel_size` GPUs: inside one pod when it fits (they
    share NVLink), else on whole pods of its own (tensor parallelism across nodes)."""
    whole = sum(size // gpus_per_node for size in chunks if size > gpus_per_node)
    free: list[int] = []
    for size in sorted((c for c in chunks if c <= gpus_per_node), reverse=True):
        for i, room in enumerate(free):
            if room >= size:
                free[i] -= size
                break
        else:
            free.append(gpus_per_node - size)
    return whole + len(free)


def worker_groups(spec: ClusterSpec, gpus_per_node: int = DEFAULT_GPUS_PER_NODE) -> list[dict]:
    """One worker group per GPU shape, with pod counts that fit the tiers' replicas."""
    by_shape: dict[str | None, list[TierSpec]] = {}
    for tier in spec.engine_tiers:  # external tiers need no pods
        tp = tier.tensor_parallel_size
        if tier.uses_gpu and tp > gpus_per_node and tp % gpus_per_node:
            raise HelmValuesError(
                f"tier {tier.name!r}: tensor_parallel_size {tp} spans pods of "
                f"{gpus_per_node} GPUs but is not a multiple of {gpus_per_node}; use a "
                "multiple, or pipeline_parallel_size to span nodes"
            )
        by_shape.setdefault(tier.accelerator_type, []).append(tier)
    groups = []
    for shape, tiers in by_shape.items():
        if shape is None:
            low = sum(_replica_bounds(t)[0] * t.cpus_per_replica for t in tiers)
            high = sum(_replica_bounds(t)[1] * t.cpus_per_replica for t in tiers)
            # CPU tiers: one pod per 8 reserved CPUs, at least one pod.
            bounds = (max(1, math.ceil(low / 8)), max(1, math.ceil(high / 8)))
            gpus = 0
        else:

            def chunks(tiers: list[TierSpec], end: int) -> list[int]:
                return [
                    t.tensor_parallel_size
                    for t in tiers
                    for _ in range(_replica_bounds(t)[end] * t.pipeline_parallel_size)
                ]

            bounds = (
                nodes_for(chunks(tiers, 0), gpus_per_node),
                max(1, nodes_for(chunks(tiers, 1), gpus_per_node)),
            )
            gpus = gpus_per_node
        groups.append(
            {
                "name": group_name(shape),
                "acceleratorType": shape,
                "gpusPerPod": gpus,
                "minReplicas": bounds[0],
                "maxReplicas": bounds[1],
            }
        )
    return groups


def check_spec_for_kubernetes(spec: ClusterSpec) -> None:
    """What a spec must have to run in pods: a gateway bound to the pod network."""
    if spec.gateway.host not in WILDCARD_HOSTS:
        raise HelmValuesError(
            f"gateway.host is {spec.gateway.host!r}: on Kubernetes the gateway replicas must "
            "bind 0.0.0.0 (or ::) so the gateway Service can reach them; set gateway.host: 0.0.0.0"
        )


def helm_values(spec: ClusterSpec, gpus_per_node: int = DEFAULT_GPUS_PER_NODE) -> dict[str, Any]:
    """Chart values that run this spec: the whole spec (every field, as `render serve`
    writes it) plus its worker groups. The chart takes `spec` as given: its default is
    empty, so Helm's merging of values has nothing to mix into it. One field is left out
    unless the spec sets it: `gateway.responses.store_uri`, whose default is a file on
    one host; the chart puts its shared PostgreSQL store there (values `responses`)."""
    check_spec_for_kubernetes(spec)
    data = spec.model_dump(mode="json")
    if "store_uri" not in spec.gateway.responses.model_fields_set:
        del data["gateway"]["responses"]["store_uri"]
    return {"spec": data, "workerGroups": worker_groups(spec, gpus_per_node)}


def local_model_paths(spec: ClusterSpec) -> list[str]:
    """Tiers whose model or chat template is a local path: it must exist inside the image
    or a volume."""
    from tierline.cluster.specfile import is_local_path

    return [
        t.name
        for t in spec.engine_tiers
        if is_local_path(t.model_source or "") or t.chat_template is not None
    ]


def spec_values_schema() -> dict[str, Any]:
    """JSON schema (draft-07 compatible) of the chart's `spec` value, from the pydantic
    models; `$ref`s point into a top-level `definitions` object."""
    schema = ClusterSpec.model_json_schema(ref_template=f"#/{SCHEMA_DEFINITIONS}/{{model}}")
    schema.pop("title", None)
    return schema


def chart_schema_with_spec(chart_schema: dict[str, Any]) -> dict[str, Any]:
    """The chart's values schema with its `spec` part regenerated from the models.

    An empty `spec` is allowed (the chart then uses its example spec); any other is
    checked whole against the ClusterSpec schema."""
    spec_schema = spec_values_schema()
    definitions = {**spec_schema.pop("$defs", {}), "ClusterSpec": spec_schema}
    spec_ref = f"#/{SCHEMA_DEFINITIONS}/ClusterSpec"
    out = dict(chart_schema)
    out["properties"] = {
        **chart_schema["properties"],
        "spec": {
            "type": "object",
            "description": "The tierline spec (cluster/spec/); empty: the chart's example.",
            "if": {"minProperties": 1},
            "then": {"$ref": spec_ref},
        },
    }
    out[SCHEMA_DEFINITIONS] = definitions
    return out
