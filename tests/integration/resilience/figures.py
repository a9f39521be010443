"""Where the resilience tests write what they measured: `bench/results/resilience.json`,
one section per scenario, so the figures are kept apart from the assertions."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[3] / "bench" / "results" / "resilience.json"


def percentiles_ms(seconds: Sequence[float]) -> dict[str, float | None]:
    """p50, p99 and max of `seconds`, in milliseconds (None when there are none)."""
    if not seconds:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    s = sorted(seconds)
    return {
        "p50_ms": round(statistics.median(s) * 1000, 1),
        "p99_ms": round(s[int(0.99 * (len(s) - 1))] * 1000, 1),
        "max_ms": round(s[-1] * 1000, 1),
    }


def record(section: str, figures: dict[str, Any]) -> None:
    """Replace `section` of the results file with `figures`, stamped with time and load."""
    data: dict[str, Any] = {}
    if RESULTS.exists():
        try:
            data = json.loads(RESULTS.read_text())
        except ValueError:
            data = {}
    data[section] = {
        **figures,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
