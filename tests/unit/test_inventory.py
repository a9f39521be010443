"""Inventory files, Ray node tables, NVML readings and the GPU exporter, without Ray or GPUs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tierline.cluster.exporter import NodeGpuExporter
from tierline.cluster.inventory import (
    InventoryError,
    inventory_from_ray_nodes,
    load_inventory,
    parse_inventory,
)
from tierline.cluster.nvml import NodeGpus, NvmlGpuReader, RecordedNvml, record

ROOT = Path(__file__).resolve().parents[2]
NVML = ROOT / "tests" / "data" / "nvml"
GIB = 1 << 30


def _recorded(name: str) -> RecordedNvml:
    return RecordedNvml(json.loads((NVML / name).read_text()))


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "inventory").glob("*.yaml")))
def test_example_inventories_load(path: Path) -> None:
    inv = load_inventory(path)
    assert inv.nodes
    assert len({n.name for n in inv.nodes}) == len(inv.nodes)


def test_inventory_errors_name_the_field() -> None:
    with pytest.raises(InventoryError) as e:
        parse_inventory({"nodes": [{"name": "a", "gpus": 8, "cpus": 8, "memory_gib": 64}]})
    assert "nodes[0]" in str(e.value) and "gpu_type" in str(e.value)
    with pytest.raises(InventoryError) as e:
        parse_inventory({"nodes": [{"name": "a", "cpus": 8, "memory_gib": 64, "gpuz": 1}]})
    assert "nodes[0].gpuz" in str(e.value)
    with pytest.raises(InventoryError, match="appears twice"):
        parse_inventory(
            {"nodes": [{"name": "a", "cpus": 1, "memory_gib": 1}] * 2},
        )
    with pytest.raises(InventoryError, match="cannot read"):
        load_inventory(ROOT / "no-such-inventory.yaml")


# The shape of `ray.nodes()` on a two-node cluster: a CPU head and an 8xH100 worker.
RAY_NODES = [
    {
        "NodeID": "a1b2c3d4e5f60718293a4b5c6d7e8f90",
        "Alive": True,
        "NodeManagerAddress": "10.0.0.1",
        "Resources": {"CPU": 16.0, "memory": 48 * GIB, "node:10.0.0.1": 1.0},
        "Labels": {"ray.io/node-id": "a1b2c3d4"},
    },
    {
        "NodeID": "0f9e8d7c6b5a49382716051423324150",
        "Alive": True,
        "NodeManagerAddress": "10.0.0.2",
        "Resources": {
            "CPU": 96.0,
            "GPU": 8.0,
            "accelerator_type:H100": 1.0,
            "memory": 900 * GIB,
        },
        "Labels": {"tierline.io/node": "gpu-0"},
    },
    {"NodeID": "dead", "Alive": False, "NodeManagerAddress": "10.0.0.3", "Resources": {}},
]


def test_inventory_from_ray_node_table() -> None:
    inv = inventory_from_ray_nodes(RAY_NODES)
    head, gpu = inv.nodes
    assert head.name == "10.0.0.1-a1b2c3d4" and head.gpus == 0 and head.gpu_type is None
    assert head.cpus == 16 and head.memory_gib == pytest.approx(48)
    assert gpu.name == "gpu-0" and gpu.gpus == 8 and gpu.gpu_type == "H100"
    assert gpu.gpu_memory_gib == 80
    assert inv.gpu_types() == {"H100": 8}


def test_unknown_gpu_memory_must_be_given() -> None:
    nodes = [
        {
            "NodeID": "x",
            "Alive": True,
            "NodeManagerAddress": "10.0.0.9",
            "Resources": {"CPU": 8.0, "GPU": 2.0, "accelerator_type:MI300X": 1.0, "memory": GIB},
        }
    ]
    with pytest.raises(InventoryError, match="MI300X"):
        inventory_from_ray_nodes(nodes)
    assert inventory_from_ray_nodes(nodes, {"MI300X": 192}).nodes[0].gpu_memory_gib == 192


def test_recorded_h100_readings() -> None:
    node = NvmlGpuReader(_recorded("h100x2.json")).read()
    assert node.status == "ok" and node.driver_version == "570.124.06"
    busy, idle = node.gpus
    assert busy.name == "NVIDIA H100 80GB HBM3"
    assert busy.memory_total_bytes == 85520809984
    assert busy.utilization_ratio == pytest.approx(0.87)
    assert busy.power_w == pytest.approx(512.345)
    assert busy.temperature_c == 64
    assert idle.memory_used_bytes < busy.memory_used_bytes


def test_unsupported_fields_read_as_absent() -> None:
    (l4,) = NvmlGpuReader(_recorded("l4-no-power.json")).read().gpus
    assert l4.power_w is None and l4.temperature_c == 55


def test_no_driver_reads_zero_gpus() -> None:
    node = NvmlGpuReader(_recorded("no-driver.json")).read()
    assert node.gpus == [] and node.status.startswith("no NVIDIA driver")


def test_this_machine_reads_without_raising() -> None:
    # Real pynvml: zero GPUs and a reason on a machine without a driver, readings on a GPU one.
    node = NvmlGpuReader().read()
    assert isinstance(node, NodeGpus)
    assert node.gpus or node.status != "ok"


def _has_gpu() -> bool:
    return bool(NvmlGpuReader().read().gpus)


@pytest.mark.gpu
@pytest.mark.skipif(not _has_gpu(), reason="needs an NVIDIA GPU and driver")
def test_real_gpu_readings_and_exporter() -> None:
    import pynvml

    node = NvmlGpuReader().read()
    assert all(g.memory_total_bytes > 0 for g in node.gpus)
    replay = NvmlGpuReader(RecordedNvml(record(pynvml))).read()
    assert [g.uuid for g in replay.gpus] == [g.uuid for g in node.gpus]
    samples = _samples(NodeGpuExporter("n", NvmlGpuReader()).scrape())
    assert samples[("tierline_gpus", (("node", "n"),))] == len(node.gpus)


def test_exporter_publishes_recorded_gauges() -> None:
    text = NodeGpuExporter("gpu-0", NvmlGpuReader(_recorded("h100x2.json"))).scrape()
    samples = _samples(text)
    assert samples[("tierline_gpus", (("node", "gpu-0"),))] == 2
    labels = (
        ("gpu", "0"),
        ("name", "NVIDIA H100 80GB HBM3"),
        ("node", "gpu-0"),
        ("uuid", "GPU-5a1c3e0e-8f3b-4b7e-9d0b-1f6a2c9e7d01"),
    )
    assert samples[("tierline_gpu_memory_used_bytes", labels)] == 77006536704
    assert samples[("tierline_gpu_utilization_ratio", labels)] == pytest.approx(0.87)
    assert samples[("tierline_gpu_power_watts", labels)] == pytest.approx(512.345)
    assert samples[("tierline_gpu_temperature_celsius", labels)] == 64


def test_exporter_on_a_cpu_node_reads_zero() -> None:
    text = NodeGpuExporter("cpu-0", NvmlGpuReader(_recorded("no-driver.json"))).scrape()
    samples = _samples(text)
    assert samples[("tierline_gpus", (("node", "cpu-0"),))] == 0
    (avail,) = [v for (name, _), v in samples.items() if name == "tierline_gpu_nvml_available"]
    assert avail == 0
    assert not [k for k in samples if k[0] == "tierline_gpu_memory_used_bytes"]
    assert "Traceback" not in text


def test_exporter_serves_http() -> None:
    import urllib.request

    exporter = NodeGpuExporter("gpu-0", NvmlGpuReader(_recorded("h100x2.json")))
    port = exporter.start(0, "127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            body = r.read().decode()
    finally:
        exporter.stop()
    assert 'tierline_gpus{node="gpu-0"} 2.0' in body
