"""Flood benchmark: how fast tierline refuses what it cannot admit (issue 15's target: p99
time to refuse at most 100 ms under a flood of 160 concurrent requests against a capacity
of 12).

    .venv/bin/python -m bench.flood_bench [--rounds 3] [--out bench/results/flood.json]

The cluster is `configs/bench.yaml` (configs/local.yaml's gateway section: one gateway
replica, direct ingress, gRPC to the engine) with its tier's limits set to 4 running and
8 queued, so the gateway admits 12 (`deployments.gateway.pipeline.admission`). It is started through
`bench/tierline_server.py`, the code path of `tierline up`.

The client is deliberately lean, so that what is timed is the server: every connection is
opened (and used once, keep-alive) before the flood, then all requests are written at
once and each is timed from its write to the last byte of its answer. Each round sends
`--requests` non-streaming chats with `--max-tokens` (long enough that the admitted ones
hold their places while the rest arrive), waits for every answer, then pauses.

Writes `--out` (bench/results/flood.json): counts by status, time to refuse and to answer
(p50/p99/max, pooled over rounds, and per round), the load average and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.pyspy import Recorder
from bench.report import process_role
from bench.servers import Tierline, free_port

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

RUNNING, QUEUED = 4, 8  # per engine replica / per gateway replica: 12 admitted in all


@dataclass
class Answer:
    status: int
    seconds: float
    code: str


def _request(host: str, port: int, api_key: str, body: dict[str, Any]) -> bytes:
    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {api_key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "content-length":
            length = int(value)
        elif name.lower() == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if not chunked:
        return status, await reader.readexactly(length)
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return status, body
        body += chunk[:-2]


def _code(status: int, body: bytes) -> str:
    if status == 200:
        return ""
    try:
        return str(json.loads(body)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return ""


async def flood(
    host: str,
    port: int,
    api_key: str,
    model: str,
    n: int,
    max_tokens: int,
    mark: Callable[[], None] = lambda: None,
) -> list[Answer]:
    """Open `n` connections, warm each with a /healthz, then send `n` chats at once;
    `mark()` is called just before the chats are sent and once every answer is in."""
    conns = [await asyncio.open_connection(host, port) for _ in range(n)]
    health = f"GET /healthz HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    for _, writer in conns:
        writer.write(health)
    for reader, _ in conns:
        await _read_answer(reader)
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse."}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    request = _request(host, port, api_key, body)

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Answer:
        t0 = time.perf_counter()
        writer.write(request)
        status, payload = await _read_answer(reader)
        return Answer(status, time.perf_counter() - t0, _code(status, payload))

    try:
        mark()
        answers = list(await asyncio.gather(*(one(r, w) for r, w in conns)))
        mark()
        return answers
    finally:
        for _, writer in conns:
            writer.close()


def percentiles(seconds: list[float]) -> dict[str, float] | None:
    if not seconds:
        return None
    ms = sorted(s * 1000 for s in seconds)
    p99 = ms[min(len(ms) - 1, max(0, round(0.99 * len(ms)) - 1))]
    return {
        "p50_ms": round(statistics.median(ms), 1),
        "p99_ms": round(p99, 1),
        "max_ms": round(ms[-1], 1),
        "count": len(ms),
    }


def summary(answers: list[Answer]) -> dict[str, Any]:
    by_status: dict[str, int] = {}
    codes: dict[str, int] = {}
    for a in answers:
        by_status[str(a.status)] = by_status.get(str(a.status), 0) + 1
        if a.code:
            codes[a.code] = codes.get(a.code, 0) + 1
    return {
        "by_status": dict(sorted(by_status.items())),
        "refusal_codes": codes,
        "time_to_refuse": percentiles([a.seconds for a in answers if a.status in (429, 503)]),
        "time_to_answer_200": percentiles([a.seconds for a in answers if a.status == 200]),
    }


def _mark(marks: list[dict[int, tuple[str, float]]], server: Tierline) -> None:
    marks.append(server.cpu_sample())


def gateway_process(cmdline: str) -> bool:
    return process_role(cmdline) == "gateway replica"


def cpu_ms(
    before: dict[int, tuple[str, float]],
    after: dict[int, tuple[str, float]],
    pids: list[int],
    requests: int,
) -> float | None:
    """CPU ms per request of `pids` between two samples."""
    spent = [after[p][1] - before[p][1] for p in pids if p in before and p in after]
    return round(1000 * sum(spent) / requests, 3) if spent and requests else None


def flood_spec(source: Path, work: Path) -> Path:
    """`source` with its first tier's limits set to RUNNING and QUEUED, written to `work`
    with every path made absolute."""
    from tierline.cluster.specfile import load_spec, spec_to_data

    spec = load_spec(source)
    tier = spec.tiers[0].model_copy(
        update={"max_ongoing_requests": RUNNING, "max_queued_requests": QUEUED}
    )
    spec = spec.model_copy(update={"tiers": [tier]})
    path = work / "flood.yaml"
    path.write_text(yaml.safe_dump(spec_to_data(spec), sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", type=Path, default=ROOT / "configs" / "bench.yaml")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=160)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--pause-s", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "flood.json")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the gateway replica over the floods"
    )
    args = parser.parse_args()

    from tierline.cluster.specfile import load_spec
    from tierline.deployments.gateway.pipeline.admission import tier_limit
    from tierline.deployments.gateway.pipeline.auth import add_key

    work = Path(tempfile.mkdtemp(prefix="tierline-flood-"))
    spec_path = flood_spec(args.spec, work)
    spec = load_spec(spec_path)
    tier = spec.tiers[0]
    capacity = (tier_limit(tier, spec.gateway.replicas) or 0) * spec.gateway.replicas
    keys_file = work / "keys.json"
    api_key = add_key(keys_file, "bench")
    port = free_port()
    server = Tierline(spec_path, port, keys_file, work / "tierline.server.log")
    rounds: list[dict[str, Any]] = []
    pooled: list[Answer] = []
    load_before = os.getloadavg()
    try:
        server.start()
        print(f"tierline ready on port {port}; capacity {capacity}", flush=True)
        gateways = [p for p, (cmd, _) in server.cpu_sample().items() if gateway_process(cmd)]
        recorder = Recorder(work / "profiles")
        if args.profile:
            for pid in gateways:
                recorder.start("gateway replica", pid)
        spent_ms = 0.0
        for i in range(1, args.rounds + 1):
            time.sleep(args.pause_s)
            marks: list[dict[int, tuple[str, float]]] = []
            answers = asyncio.run(
                flood(
                    "127.0.0.1",
                    port,
                    api_key,
                    tier.model_name,
                    args.requests,
                    args.max_tokens,
                    functools.partial(_mark, marks, server),
                )
            )
            pooled += answers
            during = cpu_ms(marks[0], marks[1], gateways, 1)
            spent_ms += during or 0.0
            row = {
                "round": i,
                "load_average_1m": round(os.getloadavg()[0], 2),
                "gateway_cpu_ms": during,
                **summary(answers),
            }
            rounds.append(row)
            print(json.dumps(row), flush=True)
        profiles = recorder.stop()
    finally:
        killed = server.stop()
    result = {
        "what": (
            f"{args.requests} concurrent non-streaming chats (max_tokens {args.max_tokens}) "
            f"against a capacity of {capacity}, connections opened beforehand; time from "
            "each request's write to the last byte of its answer"
        ),
        "spec": str(args.spec.relative_to(ROOT) if args.spec.is_relative_to(ROOT) else args.spec),
        "capacity": capacity,
        "requests": args.requests,
        "rounds": args.rounds,
        **summary(pooled),
        "gateway_cpu_ms_per_request": round(spent_ms / max(len(pooled), 1), 3),
        "per_round": rounds,
        "target_p99_refuse_ms": 100,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_1m_before": round(load_before[0], 2),
        "cpus": os.cpu_count(),
        "left_running": killed,
    }
    if profiles:
        result["profiles"] = profiles
    refuse = result["time_to_refuse"]
    result["target_met"] = bool(refuse) and refuse["p99_ms"] <= result["target_p99_refuse_ms"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("by_status", "time_to_refuse", "target_met")}))


if __name__ == "__main__":
    main()
