"""Autoscaling on the real local cluster: scale to zero, cold start, up and down under load.

Replica counts come from Serve's own status (`serve.status()`); the gateway's view of
them shows in its routing headers. The tests run in file order on one cluster, and keep
at most two engine replicas alive at a time. Timings go to bench/results/scaling.json
as figures; no test asserts on them.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from tests.integration.conftest import ROOT
from tests.integration.scaling.conftest import ScalingCluster

FIGURES = ROOT / "bench" / "results" / "scaling.json"
# Streams that keep tier `main` busy: three in flight on one replica is three times its
# target_ongoing_requests (1), so Serve wants 2 replicas (its maximum). More streams only
# slow the second engine's start on 2 cores (six took 129 s to bring it up).
LOAD_STREAMS = 3
_figures: dict[str, Any] = {}


def _record(**values: Any) -> None:
    _figures.update(values)
    _figures["load_average"] = list(os.getloadavg())
    _figures["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    Path(FIGURES).write_text(json.dumps(_figures, indent=2) + "\n")


def _chat(cluster: ScalingCluster, model: str, max_tokens: int = 8) -> tuple[dict[str, str], Any]:
    raw = cluster.client().chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=max_tokens,
        temperature=0,
    )
    return dict(raw.headers), raw.parse()


def test_cheap_tier_scales_to_zero_and_auto_skips_it(cluster: ScalingCluster) -> None:
    took = cluster.wait_for("tier cheap at 0 replicas", lambda: cluster.running("cheap") == 0, 300)
    _record(scale_to_zero_after_ready_s=round(took, 1))
    # The gateway polls Serve's status every 2 s; until it has seen the tier at zero,
    # auto traffic would still go there (and wake it up).
    cluster.wait_for(
        "gateway sees cheap at 0", lambda: cluster.gateway_replicas()["cheap"] == 0, 60
    )
    headers, body = _chat(cluster, "auto")
    assert headers["x-tierline-tier"] == "main", headers
    assert headers["x-tierline-route-reason"] == "auto:default+cold"
    assert body.usage.completion_tokens > 0
    for _ in range(3):
        headers, _ = _chat(cluster, "auto")
        assert headers["x-tierline-tier"] == "main"
    time.sleep(5)  # auto traffic must not have woken the tier
    assert cluster.running("cheap") == 0


def test_pinned_request_waits_for_the_cold_start(cluster: ScalingCluster) -> None:
    assert cluster.running("cheap") == 0
    t0 = time.monotonic()
    stream = cluster.client().chat.completions.create(
        model="tiny-cheap",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    first: float | None = None
    usage = None
    for chunk in stream:
        if first is None and chunk.choices:
            first = time.monotonic() - t0
        usage = chunk.usage or usage
    total = time.monotonic() - t0
    assert first is not None and usage is not None and usage.completion_tokens > 0
    assert cluster.running("cheap") == 1
    # A warm request to the same tier, for comparison.
    t1 = time.monotonic()
    headers, _ = _chat(cluster, "tiny-cheap")
    warm = time.monotonic() - t1
    assert headers["x-tierline-tier"] == "cheap"
    assert headers["x-tierline-route-reason"] == "pinned"
    _record(
        cold_start_ttft_s=round(first, 2),
        cold_start_total_s=round(total, 2),
        warm_request_s=round(warm, 3),
    )


def _load(cluster: ScalingCluster, stop: threading.Event, done: list[int]) -> None:
    client = cluster.client(timeout_s=120)
    while not stop.is_set():
        stream = client.chat.completions.create(
            model="tiny-main",
            messages=[{"role": "user", "content": "Count to one hundred."}],
            max_tokens=200,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        for _ in stream:
            pass
        done.append(1)


def test_replicas_go_up_under_load_and_back_down(cluster: ScalingCluster) -> None:
    # Two engine replicas at most: wait for the cheap tier to be back at zero first.
    cluster.wait_for("tier cheap back at 0", lambda: cluster.running("cheap") == 0, 300)
    assert cluster.running("main") == 1
    stop = threading.Event()
    done: list[int] = []
    workers = [
        threading.Thread(target=_load, args=(cluster, stop, done)) for _ in range(LOAD_STREAMS)
    ]
    for w in workers:
        w.start()
    try:
        up = cluster.wait_for("tier main at 2 replicas", lambda: cluster.running("main") == 2, 600)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=180)
    assert done, "the load threads completed no request"
    down = cluster.wait_for("tier main back at 1", lambda: cluster.running("main") == 1, 400)
    assert cluster.running("main") == 1
    _record(
        upscale_to_2_under_load_s=round(up, 1),
        downscale_to_1_after_load_s=round(down, 1),
        load_requests_completed=len(done),
        load_streams=len(workers),
    )
