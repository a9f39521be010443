"""Per-node GPU exporter: NVML readings as Prometheus gauges.

`GpuCollector` reads a `GpuReader` at every scrape (no background thread) and yields
`tierline_gpu_*` gauges labelled by node and GPU; a node without GPUs or driver exports
`tierline_gpus 0` and `tierline_gpu_nvml_available{status=...} 0`. `NodeGpuExporter` serves one
collector over HTTP once `start()` is called; `start_node_exporters` runs one as a Ray actor
on every alive node, and `python -m tierline.cluster.exporter --port 9400` runs it as a process.
Each node's exporter also runs that node's orphaned-engine reaper (`cluster.reaper`): the
actors for their Ray cluster, the process for the cluster `--reap-cluster` names.
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from tierline.cluster.nvml import GpuReader, NodeGpus, NvmlGpuReader
from tierline.cluster.reaper import NodeReaper

__all__ = [
    "DEFAULT_PORT",
    "GpuCollector",
    "NodeExporterHandle",
    "NodeGpuExporter",
    "gpu_metric_families",
    "start_node_exporters",
]

DEFAULT_PORT = 9400


def gpu_metric_families(node: str, readings: NodeGpus) -> list[GaugeMetricFamily]:
    """The gauges for one node's readings. Pure: readings in, metric families out."""
    labels = ["node", "gpu", "uuid", "name"]
    count = GaugeMetricFamily("tierline_gpus", "GPUs NVML sees on the node", labels=["node"])
    count.add_metric([node], len(readings.gpus))
    up = GaugeMetricFamily(
        "tierline_gpu_nvml_available",
        "1 when NVML answered, 0 when the node has no driver or the read failed",
        labels=["node", "status"],
    )
    up.add_metric([node, readings.status], 1.0 if readings.status in ("ok", "no GPUs") else 0.0)
    fams = {
        "memory_total": GaugeMetricFamily(
            "tierline_gpu_memory_total_bytes", "GPU memory", labels=labels
        ),
        "memory_used": GaugeMetricFamily(
            "tierline_gpu_memory_used_bytes", "GPU memory in use", labels=labels
        ),
        "util": GaugeMetricFamily(
            "tierline_gpu_utilization_ratio", "GPU busy fraction (0..1)", labels=labels
        ),
        "temp": GaugeMetricFamily(
            "tierline_gpu_temperature_celsius", "GPU temperature", labels=labels
        ),
        "power": GaugeMetricFamily("tierline_gpu_power_watts", "GPU power draw", labels=labels),
    }
    for g in readings.gpus:
        lv = [node, str(g.index), g.uuid, g.name]
        fams["memory_total"].add_metric(lv, g.memory_total_bytes)
        fams["memory_used"].add_metric(lv, g.memory_used_bytes)
        for key, value in (
            ("util", g.utilization_ratio),
            ("temp", g.temperature_c),
            ("power", g.power_w),
        ):
            if value is not None:
                fams[key].add_metric(lv, value)
    return [count, up, *fams.values()]


class GpuCollector(Collector):
    """Prometheus collector that reads the GPUs at scrape time."""

    def __init__(self, node: str, reader: GpuReader) -> None:
        self.node = node
        self.reader = reader

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from gpu_metric_families(self.node, self.reader.read())


class NodeGpuExporter:
    """One node's exporter: a registry with a GpuCollector, served by `start()`."""

    def __init__(self, node: str | None = None, reader: GpuReader | None = None) -> None:
        self.node = node or socket.gethostname()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(GpuCollector(self.node, reader or NvmlGpuReader()))
        self._server: Any = None
        self.reaper: NodeReaper | None = None

    def start_reaper(self, cluster: str, interval_s: float = 10.0) -> None:
        """Sweep this node for `cluster`'s orphaned engine processes every `interval_s`,
        counted in `tierline_reaped_engine_processes_total` on this exporter's page."""
        self.reaper = NodeReaper(cluster, interval_s=interval_s, registry=self.registry)
        self.reaper.start()

    def scrape(self) -> str:
        """The metrics page, as Prometheus would get it."""
        return generate_latest(self.registry).decode()

    def start(self, port: int = DEFAULT_PORT, addr: str = "0.0.0.0") -> int:
        """Serve /metrics on `port` (0: any free port); returns the port."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        return int(server.server_address[1])

    def stop(self) -> None:
        if self.reaper is not None:
            self.reaper.stop()
            self.reaper = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@dataclass(frozen=True)
class NodeExporterHandle:
    node: str  # the node's name (its tierline.io/node label, else IP and short id)
    node_id: str
    port: int
    actor: Any  # keep it: the exporter lives as long as this handle


def start_node_exporters(port: int = DEFAULT_PORT, reap: bool = True) -> list[NodeExporterHandle]:
    """Start a GPU exporter actor pinned to every alive node of the connected Ray cluster.

    Each actor reserves no CPU, so it never competes with engines, and serves `/metrics` on
    `port` of its node (0: a free port, reported in the handle). With `reap`, each also
    ends its node's engine processes of this cluster that outlived their replica.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    from tierline.cluster.inventory import ray_node_name

    @ray.remote(num_cpus=0)
    class _ExporterActor:
        def __init__(self, node: str) -> None:
            self._exporter = NodeGpuExporter(node)

        def start(self, port: int, cluster: str | None) -> int:
            if cluster is not None:
                self._exporter.start_reaper(cluster)
            return self._exporter.start(port)

        def scrape(self) -> str:
            return self._exporter.scrape()

    started: list[tuple[str, str, Any]] = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        name = ray_node_name(node)
        actor = _ExporterActor.options(  # type: ignore[attr-defined]
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
        ).remote(name)
        started.append((name, node["NodeID"], actor))
    cluster = str(ray.get_runtime_context().gcs_address) if reap else None
    ports = ray.get([a.start.remote(port, cluster) for _, _, a in started])
    return [
        NodeExporterHandle(name, node_id, p, actor)
        for (name, node_id, actor), p in zip(started, ports, strict=True)
    ]


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve this node's GPU metrics.")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--addr", default="0.0.0.0")
    parser.add_argument("--node", default=None, help="Node name label (default: hostname).")
    parser.add_argument("--once", action="store_true", help="Print one scrape and exit.")
    parser.add_argument(
        "--reap-cluster",
        default=None,
        help="Also end this node's orphaned vLLM engines of the Ray cluster at this GCS "
        "address (tierline.cluster.reaper).",
    )
    args = parser.parse_args(argv)
    exporter = NodeGpuExporter(args.node)
    if args.reap_cluster and not args.once:
        exporter.start_reaper(args.reap_cluster)
    if args.once:
        print(exporter.scrape(), end="")
        return 0
    port = exporter.start(args.port, args.addr)
    print(f"GPU metrics on http://{args.addr}:{port}/metrics", flush=True)
    import threading

    threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
