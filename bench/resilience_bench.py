"""Resilience benchmark, in-process part: what the gateway itself spends refusing a request
to a full tier (HTTP parsing, auth, bounds, routing, admission, the 503 body), without Ray,
the Serve proxy or a loaded machine around it.

    .venv/bin/python -m bench.resilience_bench [--requests 2000]

Adds the section `gateway_reject_in_process` to bench/results/resilience.json. The live
figures (time to reject through the proxy under a 10x flood and with sequential probes,
failover after a replica kill, cancellation) are written there by the tests in
tests/integration/resilience/ and tests/integration/local/test_cancellation.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import httpx
from tierline.cluster.spec import AuthSpec
from tierline.cluster.specfile import load_spec_text
from tierline.deployments.gateway import GatewayCore, create_app
from tierline.deployments.gateway.engines.engine_client import EngineItem, Method
from tierline.deployments.gateway.pipeline.auth import add_key, load_key_store
from tierline.deployments.gateway.pipeline.tokens import EstimatingCounter

ROOT = Path(__file__).resolve().parents[1]

RESULTS = ROOT / "bench" / "results" / "resilience.json"
SPEC = """
tiers:
  - name: small
    model_source: org/small
    max_context_tokens: 512
    max_ongoing_requests: 4
    max_queued_requests: 4
router:
  policy: rules
gateway:
  replicas: 2
"""


class HeldEngine:
    """An engine whose requests never produce output: the tier stays full."""

    async def generate(
        self, method: Method, body: dict[str, Any]
    ) -> AsyncGenerator[EngineItem, None]:
        await asyncio.Event().wait()
        yield "data: [DONE]\n\n"

    async def healthy(self, timeout_s: float) -> bool:
        return True


async def measure(requests: int) -> dict[str, Any]:
    spec = load_spec_text(SPEC)
    keys_file = Path(tempfile.mkdtemp()) / "keys.json"
    key = add_key(keys_file, "bench")
    keys = load_key_store(AuthSpec(keys_file=str(keys_file)), environ={})
    core = GatewayCore(spec, {"small": HeldEngine()}, {"small": EstimatingCounter()})
    app = create_app(core, keys)
    headers = {"Authorization": f"Bearer {key}"}
    body = {
        "model": "small",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 8,
    }
    limit = core.slots.limits["small"]
    assert limit is not None
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway", timeout=30
    ) as client:
        holders = [
            asyncio.create_task(client.post("/v1/chat/completions", json=body, headers=headers))
            for _ in range(limit)
        ]
        while core.slots.in_flight["small"] < limit:
            await asyncio.sleep(0.01)
        times, statuses = [], []
        for _ in range(requests):
            t0 = time.perf_counter()
            r = await client.post("/v1/chat/completions", json=body, headers=headers)
            times.append(time.perf_counter() - t0)
            statuses.append(r.status_code)
        for h in holders:
            h.cancel()
        await asyncio.gather(*holders, return_exceptions=True)
    times.sort()
    return {
        "what": "sequential requests to a full tier through the gateway's ASGI app "
        "(auth, bounds, routing, admission), in-process, no Ray",
        "requests": requests,
        "admission_limit_per_gateway_replica": limit,
        "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
        "p50_ms": round(statistics.median(times) * 1000, 3),
        "p99_ms": round(times[int(0.99 * (len(times) - 1))] * 1000, 3),
        "max_ms": round(times[-1] * 1000, 3),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    figures = asyncio.run(measure(args.requests))
    data = json.loads(args.out.read_text()) if args.out.exists() else {}
    data["gateway_reject_in_process"] = figures
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
