"""A four-node Ray cluster in this process tree: four nodes with 8 fake H100s each.

The GPUs are only declared resources: placement groups schedule on them as on a real
cluster, but no engine runs on them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import psutil
import pytest
from tierline.cluster.inventory import NODE_LABEL

GPU_NODES = 4
GPUS_PER_NODE = 8


def _our_ray_processes() -> list[str]:
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            text = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if any(n in text for n in ("raylet", "gcs_server", "ray::", "default_worker")):
            out.append(f"{p.pid} {text[:100]}")
    return out


def _gpu_node_args(i: int) -> dict:
    return {
        "num_cpus": 16,
        "num_gpus": GPUS_PER_NODE,
        "resources": {"accelerator_type:H100": 1.0},
        "labels": {NODE_LABEL: f"gpu-{i}"},
    }


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[object]:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args=_gpu_node_args(0))
    try:
        for i in range(1, GPU_NODES):
            cluster.add_node(**_gpu_node_args(i))
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
    deadline = time.monotonic() + 30
    while _our_ray_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    leaked = _our_ray_processes()
    assert not leaked, "Ray processes left behind:\n" + "\n".join(leaked)
