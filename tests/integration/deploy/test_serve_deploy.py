"""`tierline render serve` + real `serve deploy` against a `ray start --head` cluster.

The relay's guarantees (issue 25) on this path, as `tierline up` has them (tests/
integration/local and resilience): citations in a stream's first chunk, a stream charged
the tokens it served, a client's disconnect cancelling the engine request, an engine
dying mid-stream (the stream ends with an error event and `[DONE]`) and the requests
after it failing over before their first byte. The last test ends the cluster with
`ray stop --force` and checks that no vLLM process outlives it (issue 19's third way to
stop a cluster; the other two are in tests/integration/shutdown), so the module starts
one cluster for all of them."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from openai import OpenAI
from tierline.cli.local import endpoint, logical_cpus, wait_ready
from tierline.cluster.render import ray_process_env, serve_config
from tierline.cluster.spec import ClusterSpec, TenantSpec

from tests.integration.conftest import (
    API_KEY,
    AUTH,
    TENANT_KEYS,
    descendants,
    engine_processes,
    free_port,
    leftover_processes,
    listener,
    local_spec,
    marked_by_one_cluster,
    replica_process,
    seconds_until_gone,
)
from tests.integration.resilience.figures import record

GONE_WITHIN_S = 30.0

BIN = Path(sys.executable).parent


TOKEN_ENV: dict[str, str] = {}
# Ray holds a stopping direct-ingress replica open 30 s for a load balancer to deregister
# it; nothing sits in front of this test's head, so the hold would only slow its stop.
NO_BALANCER_ENV = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0"}


@pytest.fixture(scope="module")
def spec() -> ClusterSpec:
    """configs/tiny.yaml with RAG on and a metered tenant (so the quota deployment runs
    too), and the fallback the other way round: large falls back to small, so the engine
    that dies mid-stream (large: its long answers cannot end before the kill) has a tier
    to fail over to."""
    base = local_spec(
        free_port(), rag=True, tenants=[TenantSpec(name="metered", tokens_per_min=600)]
    )
    data = base.model_dump(mode="json")
    for tier in data["tiers"]:
        tier["fallback_tier"] = "small" if tier["name"] == "large" else None
    return ClusterSpec.model_validate(data)


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **TOKEN_ENV}
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def wait_for_dashboard(url: str, head: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert head.poll() is None, "ray start --head exited"
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answers (token auth may refuse us): it is up
        except OSError:
            time.sleep(1.0)
    raise TimeoutError(f"Ray dashboard at {url} did not come up")


@dataclass(frozen=True)
class RayHead:
    url: str  # the dashboard's, for `serve deploy --address`
    pid: int  # `ray start --head --block`: every process of the head runs under it


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory, spec: ClusterSpec) -> Iterator[RayHead]:
    # Ray's token authentication stays on: the head, `serve deploy` and `serve status` all
    # read the same token file.
    token = tmp_path_factory.mktemp("ray") / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    TOKEN_ENV.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    dash = free_port()
    # `--block` keeps this head's processes under one parent that we stop, instead of
    # `ray stop`, which would stop every Ray cluster on the machine.
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--num-cpus={logical_cpus(spec)}",
            f"--port={free_port()}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            "--include-dashboard=true",
            "--disable-usage-stats",
        ],
        # What `tierline render serve` says every node of the cluster must have.
        env={
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            **TOKEN_ENV,
            **ray_process_env(spec),
            **NO_BALANCER_ENV,
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    dash_url = f"http://127.0.0.1:{dash}"
    ours: dict[int, str] = {}
    try:
        wait_for_dashboard(dash_url, head)
        yield RayHead(dash_url, head.pid)
    finally:
        ours = descendants(head.pid)
        if head.poll() is None:
            # Graceful order: Serve first (replicas stop their vLLM engine processes), then
            # Ray. Killing Ray alone SIGKILLs replicas and orphans their EngineCore children
            # (unless the replicas' watchdog and the exporter's reaper end them: the test
            # below).
            run(str(BIN / "serve"), "shutdown", "--address", dash_url, "-y", timeout=120)
            head.send_signal(signal.SIGTERM)
            try:
                head.wait(timeout=120)
            except subprocess.TimeoutExpired:
                head.kill()
                head.wait()
    leaked = leftover_processes(ours)
    assert not leaked, "the Ray head left processes behind:\n" + "\n".join(leaked)


def _relay_record(request_id: str, timeout_s: float) -> dict[str, object] | None:
    """The access record an engine replica of any local Ray session wrote for a relayed
    request with this (unique) id: its `message` says `RELAY <path> <status> <outcome>
    <ms>`; None if none appears within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        for log in Path("/tmp/ray").glob("session_*/logs/serve/replica_*tier-*.log"):
            for line in log.read_text(errors="replace").splitlines():
                if request_id in line and '"event": "relay"' in line:
                    record: dict[str, object] = json.loads(line)
                    return record
        if time.monotonic() > deadline:
            return None
        time.sleep(1)


def test_rendered_config_deploys_and_serves(
    ray_head: RayHead, spec: ClusterSpec, tmp_path: Path
) -> None:
    config_file = tmp_path / "serve.yaml"
    config_file.write_text(yaml.safe_dump(serve_config(spec), sort_keys=False))
    deployed = run(str(BIN / "serve"), "deploy", str(config_file), "--address", ray_head.url)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    url = endpoint(spec)
    wait_ready(url, timeout_s=600)
    client = OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hello"}], max_tokens=4
    )
    assert raw.headers["x-tierline-tier"] == "small"
    assert raw.parse().usage.completion_tokens <= 4
    # the relay path: a streamed chat goes to the engine replica's own vLLM app, and the
    # replica's access record for its request id says so
    rid = f"deploy-relay-{uuid.uuid4().hex[:10]}"
    stream = client.chat.completions.create(
        model="small",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=5,
        stream=True,
        extra_headers={"x-request-id": rid},
    )
    chunks = list(stream)
    assert chunks and chunks[-1].choices[0].finish_reason is not None
    assert _relay_record(rid, timeout_s=30), f"no relay access record for {rid}"
    # the fast path: the gateway replica itself holds the spec's port, not Serve's proxy
    owner = listener(spec.gateway.port)
    assert "ServeReplica" in owner and "gateway" in owner, owner
    status = run(str(BIN / "serve"), "status", "--address", ray_head.url)
    assert status.returncode == 0
    apps = yaml.safe_load(status.stdout)["applications"]
    assert apps[spec.name]["status"] == "RUNNING"


def _stream_lines(
    url: str, body: dict[str, object], headers: dict[str, str], stop_after: int | None = None
) -> list[str]:
    """The `data:` lines of a streamed chat, all of them or the first `stop_after` (then
    the client walks away)."""
    lines: list[str] = []
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120
    ) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: "):
                lines.append(line)
                if stop_after is not None and len(lines) >= stop_after:
                    break
    return lines


def test_a_relayed_stream_carries_its_citations_in_the_first_chunk(spec: ClusterSpec) -> None:
    url = endpoint(spec)
    with httpx.Client(base_url=url, headers=AUTH, timeout=120) as http:
        assert http.post("/v1/rag/collections", json={"name": "kb"}).status_code in (200, 201)
        doc = {"id": "zorbania", "text": "The capital city of Zorbania is Quillport."}
        r = http.post("/v1/rag/collections/kb/documents", json={"documents": [doc]})
        assert r.status_code == 200, r.text
    rid = f"deploy-rag-{uuid.uuid4().hex[:10]}"
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": "What is the capital of Zorbania?"}],
        "max_tokens": 4,
        "stream": True,
        "rag": {"collection": "kb", "top_k": 1},
    }
    lines = _stream_lines(url, body, {**AUTH, "x-request-id": rid})
    first = json.loads(lines[0].removeprefix("data: "))
    assert first["citations"][0]["document_id"] == "zorbania"
    assert lines[-1] == "data: [DONE]"
    assert _relay_record(rid, timeout_s=30), f"the grounded stream {rid} was not relayed"


def test_relayed_streams_are_charged_the_tokens_they_served(spec: ClusterSpec) -> None:
    """Tenant `metered` (600 tokens a minute) streams without asking for usage and
    without max_tokens: the gateway asks the engine for usage, charges it, strips it, and
    what the tenant is served stays within its quota (as tests/integration/local/
    test_quotas.py checks on `tierline up`)."""
    url = endpoint(spec)
    msg = [{"role": "user", "content": "Tell me a long story about the sea."}]
    # the prompt's length, asked by the unlimited tenant (the metered one sees no usage)
    asked = {"model": "tiny-small", "messages": msg, "max_tokens": 1}
    probe = httpx.post(f"{url}/v1/chat/completions", json=asked, headers=AUTH, timeout=120)
    prompt_tokens = int(probe.json()["usage"]["prompt_tokens"])
    metered = {"Authorization": f"Bearer {TENANT_KEYS['metered']}"}
    served, codes, relayed = 0, list[int](), list[str]()
    for _ in range(6):
        rid = f"deploy-quota-{uuid.uuid4().hex[:10]}"
        body = {
            "model": "tiny-small",
            "messages": msg,
            "stream": True,
            "stream_options": {"include_usage": False},
            "temperature": 1.0,
            "logprobs": True,  # one entry per token, however many tokens an event holds
        }
        r = httpx.post(
            f"{url}/v1/chat/completions",
            json=body,
            headers={**metered, "x-request-id": rid},
            timeout=120,
        )
        codes.append(r.status_code)
        if r.status_code == 429:
            assert r.headers.get("retry-after")
            continue
        assert r.status_code == 200, r.text
        chunks = [
            json.loads(ln.removeprefix("data: "))
            for ln in r.text.splitlines()
            if ln.startswith("data: ") and ln != "data: [DONE]"
        ]
        assert all(ch.get("usage") is None for ch in chunks)  # none asked for, none sent
        served += prompt_tokens + sum(
            len((ch["choices"][0].get("logprobs") or {}).get("content") or [])
            for ch in chunks
            if ch["choices"]
        )
        relayed.append(rid)
    assert 200 in codes and 429 in codes, codes
    assert served <= 600, f"served {served} tokens against tokens_per_min 600 ({codes})"
    assert _relay_record(relayed[0], timeout_s=30), "the metered streams were not relayed"


def _long_answer(stream: bool = True) -> dict[str, object]:
    """An answer of the large tier that runs for seconds (ignore_eos: all of max_tokens)."""
    return {
        "model": "tiny-large",
        "messages": [{"role": "user", "content": "Write a very long story."}],
        "max_tokens": 1500,
        "temperature": 0,
        "ignore_eos": True,
        "stream": stream,
    }


def test_a_client_leaving_mid_stream_cancels_the_engine_request(spec: ClusterSpec) -> None:
    rid = f"deploy-leave-{uuid.uuid4().hex[:10]}"
    lines = _stream_lines(endpoint(spec), _long_answer(), {**AUTH, "x-request-id": rid}, 5)
    left_at = time.time()
    assert len(lines) == 5 and lines[-1] != "data: [DONE]"
    record_ = _relay_record(rid, timeout_s=60)
    assert record_ is not None, f"no relay access record for {rid}"
    # the engine replica's vLLM app saw the gateway close the relay and stopped the request
    assert "CANCELLED" in str(record_["message"]), record_["message"]
    stamp = datetime.strptime(str(record_["asctime"]), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    print(f"relayed request ended {stamp - left_at:+.2f} s after the client left")
    record(
        "disconnect_serve_deploy",
        {
            "what": "client leaves a relayed 1,500-token stream after 5 events, `serve "
            "deploy` of `render serve`'s output: when the engine replica's access record "
            "says the request ended (CANCELLED), from the client's close",
            "ended_after_close_s": round(stamp - left_at, 2),
        },
    )


def _pinned_to_large(url: str, stream: bool, max_tokens: int = 8) -> httpx.Response:
    """A short request pinned to the large tier."""
    body = {**_long_answer(stream), "max_tokens": max_tokens}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=120)


def _outcome(r: httpx.Response) -> tuple[int, str, str, str]:
    """Status, tier and route reason headers, body."""
    return (
        r.status_code,
        r.headers.get("x-tierline-tier", ""),
        r.headers.get("x-tierline-route-reason", ""),
        r.text,
    )


def test_an_engine_dying_mid_stream_ends_the_stream_and_the_next_requests_fail_over(
    spec: ClusterSpec,
) -> None:
    """SIGKILL of the large tier's engine replica 3 events into a relayed stream: that
    stream ends with an error event and `[DONE]`; the requests sent to the tier at the
    kill (before the gateway learns the tier is down) find its relay gone and move to
    its fallback before their first byte, every one answered; then Serve replaces the
    replica and the tier answers itself again."""
    url = endpoint(spec)
    victim = replica_process("tier-large")
    lines: list[str] = []
    sent: list[Future[httpx.Response]] = []
    killed_at = 0.0
    with (
        ThreadPoolExecutor(4) as pool,
        httpx.stream(
            "POST", f"{url}/v1/chat/completions", json=_long_answer(), headers=AUTH, timeout=120
        ) as r,
    ):
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            lines.append(line)
            if len(lines) == 3:
                victim.send_signal(signal.SIGKILL)
                killed_at = time.monotonic()
                sent = [pool.submit(_pinned_to_large, url, s) for s in (False, True, False, True)]
        answered = [_outcome(f.result()) for f in sent]
    assert not victim.is_running()
    # the stream ended as a client can tell: an error event, then [DONE]; not cut, not hung
    assert lines[-1] == "data: [DONE]", lines[-3:]
    assert '"error"' in lines[-2], lines[-3:]
    print(f"after the kill: {[a[:3] for a in answered]}")
    for status, tier, reason, text in answered:
        assert (status, tier) == (200, "small") and "+fallback" in reason, text
        assert '"error"' not in text
    for _, _, _, text in answered[1::2]:
        assert text.rstrip().endswith("data: [DONE]"), text
    # Serve replaces the replica; the large tier answers itself again (meanwhile a request
    # pinned to it is refused with 503 and Retry-After: the gateway knows it is down)
    waited: dict[int, int] = {}
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        r = _pinned_to_large(url, False, max_tokens=4)
        waited[r.status_code] = waited.get(r.status_code, 0) + 1
        if r.status_code == 200 and r.headers.get("x-tierline-tier") == "large":
            break
        assert r.status_code == 200 or (r.status_code == 503 and r.headers.get("retry-after"))
        time.sleep(2.0)
    assert r.headers.get("x-tierline-tier") == "large", waited
    record(
        "engine_death_serve_deploy",
        {
            "what": "SIGKILL of the large tier's engine replica 3 events into a relayed "
            "stream, `serve deploy` of `render serve`'s output; 4 requests pinned to "
            "large (fallback small) sent at the kill; then one every 2 s until large "
            "answers again",
            "at_kill": [{"status": s, "tier": t, "reason": why} for s, t, why, _ in answered],
            "while_replaced_by_status": {str(k): v for k, v in waited.items()},
            "large_serving_again_s": round(time.monotonic() - killed_at, 1),
        },
    )
    assert replica_process("tier-large").pid != victim.pid


def _ray_stop_force(head: int) -> list[int]:
    """What `ray stop --force` does, to this head's processes only: SIGKILL to each one
    Ray's process list matches (by name, or by command line). The real command would also
    stop every other Ray cluster of this user on the machine."""
    from ray.autoscaler._private.constants import RAY_PROCESSES

    killed = []
    for p in psutil.Process(head).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            name, cmd = p.name(), " ".join(p.cmdline())
            if any(str(kw) in (name if by_name else cmd) for kw, by_name in RAY_PROCESSES):
                p.kill()
                killed.append(p.pid)
    return killed


def test_ray_stop_force_leaves_no_engine(ray_head: RayHead, spec: ClusterSpec) -> None:
    """Last in this module: it ends the cluster the test above deployed."""
    wait_ready(endpoint(spec), timeout_s=60)
    engines = engine_processes(ray_head.pid)
    marked_by_one_cluster(engines)
    t0 = time.monotonic()
    assert _ray_stop_force(ray_head.pid)
    took = seconds_until_gone(engines, t0, GONE_WITHIN_S)
    print(f"`ray stop --force` after `serve deploy`: last vLLM process gone after {took:.1f} s")
    record(
        "orphans_ray_stop_force",
        {
            "what": "`ray stop --force` (SIGKILL of every Ray process of the head) after "
            "`serve deploy` of local.yaml (tests/integration/deploy)",
            "vllm_processes": len(engines),
            "last_gone_s": round(took, 2),
        },
    )
