"""A client that walks away mid-stream stops the engine, shown with vLLM's own metrics
(exported through Ray's metrics since tierline sets `log_engine_metrics`):
the engine's generated-token counter ends about where the client stopped reading, far
short of the answer's `max_tokens` (`ignore_eos` would make it generate them all), and
`vllm:num_requests_running` drops back to 0. The client reads until the gauge shows the
request running, which needs one of Ray's exports (every report interval) to fall inside
the stream; up to 1,700 tokens (about 16 s) are read for that, and once in 5 runs here
that was not enough, so the gauge's part is recorded, not asserted.

The test asserts that the engine stopped. How soon is measured two ways: Serve's log of the
engine replica says when its call ended, and the tokens the engine made after the
client's last read, at the stream's measured rate, bound the time it took to stop
generating (an upper bound: tokens already on their way to the client count too). These
figures and the gauge's drop are written to `bench/results/resilience.json` (section
`cancellation`), never asserted. The gauge is seen through Ray's metrics export,
every report interval (10 s by default), so its figure is dominated by that interval.
The interval is not shortened here: Ray's agent drops a gauge that was not set again within
two intervals, and a 100 ms interval made Serve's and vLLM's gauges vanish for the other
tests of the package (`test_observability.py`).
"""

from __future__ import annotations

import os
import time
import urllib.request
import uuid
from collections.abc import Callable
from datetime import datetime

from tierline.cli import local

from tests.integration.local.conftest import Cluster, serve_log_records
from tests.integration.resilience.figures import record

REPORT_INTERVAL_MS = int(os.environ.get("RAY_metrics_report_interval_ms", "10000"))  # noqa: SIM112
CAUGHT_UP = 5  # chunks in a row the client waited for: nothing left buffered before it
MAX_TAIL_CHUNKS = 300  # read after the gauge showed the request, at most
LAST_CHUNK = 1700  # walk away by then even if the gauge has not shown the request yet

RUNNING = "ray_vllm_num_requests_running"
GENERATED = "ray_vllm_generation_tokens_total"
MAX_TOKENS = 1900  # tiny-large: 2048 tokens of context


def parse_metric(text: str, name: str, model: str) -> float | None:
    """Sum of `name`'s samples whose labels name `model` (Prometheus text format);
    None when the engine has not exported the metric yet."""
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith(name + "{") and f'model_name="{model}"' in line:
            total += float(line.rsplit(" ", 1)[1])
            found = True
    return total if found else None


def read(url: str, name: str, model: str) -> float | None:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return parse_metric(resp.read().decode(), name, model)


def test_parse_metric_reads_prometheus_text() -> None:
    text = (
        "# TYPE ray_vllm_num_requests_running gauge\n"
        'ray_vllm_num_requests_running{engine="0",model_name="tiny-large",'
        'SessionName="s"} 2.0\n'
        'ray_vllm_num_requests_running{engine="0",model_name="tiny-small"} 1.0\n'
    )
    assert parse_metric(text, RUNNING, "tiny-large") == 2.0
    assert parse_metric(text, RUNNING, "tiny-small") == 1.0
    assert parse_metric(text, RUNNING, "other") is None


def wait_for(check: Callable[[], bool], timeout_s: float, period_s: float = 0.02) -> float | None:
    """Seconds until `check()` is true, or None after `timeout_s`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if check():
            return time.monotonic() - t0
        time.sleep(period_s)
    return None


def engine_call_ended(request_id: str) -> tuple[float, str] | None:
    """When Serve's access log of an engine replica says its call for `request_id` ended
    (Unix time), and the status it gives (CANCELLED when the cancel reached the call
    while it was running; a call whose stream was closed between two chunks can end OK)."""
    for rec in serve_log_records():
        message = rec.get("message", "").split()
        if (
            "_tier-" in rec["_file"]
            and rec.get("request_id") == request_id
            and len(message) >= 4
            and message[-1].endswith("ms")
        ):
            stamp = datetime.strptime(rec["asctime"], "%Y-%m-%d %H:%M:%S,%f")
            return stamp.timestamp(), message[-2]  # logging writes local time
    return None


def settled(url: str, name: str, model: str, interval_s: float, timeout_s: float) -> float:
    """`name`'s value once it holds still across a report interval: Ray exports a counter
    up to one interval after it moves."""
    deadline = time.monotonic() + timeout_s
    last = read(url, name, model)
    while True:
        time.sleep(interval_s + 1.0)
        now = read(url, name, model)
        if now is not None and now == last:
            return now
        assert time.monotonic() < deadline, f"{name} still moving after {timeout_s} s"
        last = now


def test_disconnect_mid_stream_stops_the_engine(cluster: Cluster) -> None:
    url = local.metrics_url()
    model = cluster.spec.tier("large").model_name
    interval_s = REPORT_INTERVAL_MS / 1000
    # a one-token request makes the engine export its counters; then it is idle and the
    # count holds still: the baseline
    cluster.client().completions.create(model=model, prompt="hi", max_tokens=1)
    generated_before = settled(url, GENERATED, model, interval_s, timeout_s=120)

    rid = f"cancel-{uuid.uuid4().hex[:12]}"
    stream = cluster.client().chat.completions.create(
        extra_headers={"x-request-id": rid},
        model=model,
        messages=[{"role": "user", "content": "Write a very long story."}],
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    # Read the answer until Ray's export shows the engine running it (the gauge moves at
    # most once per report interval). Then read on, without pausing to scrape, until the
    # client has caught up with the engine: CAUGHT_UP chunks in a row that each had to be
    # waited for (a chunk already buffered arrives at once). Then walk away: the tokens
    # the engine makes after that are the ones it made after the disconnect.
    chunk_times: list[float] = []
    seen_at: int | None = None
    waited = 0
    next_poll = 0.0
    for _ in stream:
        chunk_times.append(time.monotonic())
        chunks = len(chunk_times)
        if seen_at is None:
            if chunk_times[-1] >= next_poll:
                if (read(url, RUNNING, model) or 0.0) >= 1:
                    seen_at = chunks
                next_poll = time.monotonic() + 0.25
            if chunks >= LAST_CHUNK:
                break
            continue
        pace = (chunks - 1) / (chunk_times[-1] - chunk_times[0])
        waited = waited + 1 if chunk_times[-1] - chunk_times[-2] >= 0.4 / pace else 0
        if waited >= CAUGHT_UP or chunks >= seen_at + MAX_TAIL_CHUNKS:
            break
    stream.close()  # the client walks away
    closed_at = time.time()
    chunks = len(chunk_times)

    # The gauge falls back to 0 (or leaves the scrape: Ray's agent drops a gauge two
    # report intervals after its last set, and an idle engine sets none).
    dropped = wait_for(lambda: not read(url, RUNNING, model), timeout_s=90, period_s=0.05)
    assert dropped is not None, "the engine still runs the request 90 s after the disconnect"

    # The engine stopped: once its token counter holds still, it made about as many tokens
    # as the client read, far short of max_tokens (ignore_eos: it would have made them all).
    generated = settled(url, GENERATED, model, interval_s, timeout_s=120) - generated_before
    after_disconnect = generated - chunks
    assert 0 < generated <= chunks + (MAX_TOKENS - chunks) // 2, (generated, chunks)

    # Serve writes the access record when the call's generator has unwound
    ended: tuple[float, str] | None = None

    def logged() -> bool:
        nonlocal ended
        ended = engine_call_ended(rid)
        return ended is not None

    wait_for(logged, timeout_s=30, period_s=0.5)
    assert ended is not None, f"the engine replica's log has no record of the call {rid}"
    ended_at, status = ended

    # the whole stream's pace: the engine's, unless the client fell behind (then slower,
    # which makes the figure below larger)
    rate = (chunks - 1) / (chunk_times[-1] - chunk_times[0])
    figures = {
        "what": "client disconnect mid-stream: tokens the engine made after the client "
        "stopped reading, and vllm:num_requests_running back to 0",
        "tier": "large",
        "max_tokens": MAX_TOKENS,
        "chunks_read_before_disconnect": chunks,
        "tokens_generated": generated,
        "tokens_after_last_chunk_read": after_disconnect,
        # None: no export of Ray's fell inside the stream (once in 5 runs here)
        "chunks_read_after_gauge_showed_running": None if seen_at is None else chunks - seen_at,
        "client_caught_up_at_disconnect": waited >= CAUGHT_UP,
        "stream_tokens_per_s": round(rate, 1),
        # Serve's log of the engine replica: its call ended this long after the client
        # closed (the log's clock has millisecond resolution)
        "engine_call_cancelled_after_close_ms": round((ended_at - closed_at) * 1000, 1),
        "engine_call_status": status,
        # the engine made at most `after_disconnect` more tokens, each 1/rate apart: it
        # stopped within that many inter-token intervals plus one (an upper bound: tokens
        # still on their way from the engine to the client when it closed count too)
        "engine_stopped_within_ms": round((max(after_disconnect, 0) + 1) / rate * 1000, 1),
        "gauge_zero_after_disconnect_ms": None if seen_at is None else round(dropped * 1000, 1),
        "metrics_report_interval_ms": REPORT_INTERVAL_MS,
        "note": "tokens counted by the engine's own counter once it held still across a "
        "report interval; the gauge is read through Ray's export (polled every 50 ms), so "
        "its figure includes up to one report interval of export delay",
    }
    record("cancellation", figures)
    print(f"cancellation: {figures}")
