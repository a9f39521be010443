"""Issue 16 on a live cluster: a trickling stream is cut at `gateway.request_timeout_s`
and frees its tier slot and quota ticket, also when the client leaves; failover never
leaves the tenant's tiers, and its error names no upstream URL.

`ext-trickle` streams a chunk every half second for ever and has one slot at the gateway;
tenant `trickle` may have one request in flight (see this package's conftest)."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from tests.integration.conftest import AUTH, TENANT_KEYS
from tests.integration.tiers.conftest import REQUEST_TIMEOUT_S, TiersCluster

MSG = [{"role": "user", "content": "Say something."}]
TRICKLE = {"Authorization": f"Bearer {TENANT_KEYS['trickle']}"}
STREAM = {"model": "ext-trickle", "messages": MSG, "max_tokens": 4, "stream": True}
SMALL = {"model": "tiny-small", "messages": MSG, "max_tokens": 2}


def post(cluster: TiersCluster, body: dict[str, object], headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{cluster.url}/v1/chat/completions", json=body, headers=headers, timeout=60)


def eventually(ok: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ok():
            return True
        time.sleep(0.25)
    return False


def stream_starts(cluster: TiersCluster, headers: dict[str, str]) -> bool:
    """A stream on ext-trickle gets its first chunk (then the client leaves)."""
    url = f"{cluster.url}/v1/chat/completions"
    with httpx.stream("POST", url, json=STREAM, headers=headers, timeout=30) as resp:
        if resp.status_code != 200:
            return False
        return any(line.startswith("data: {") for line in resp.iter_lines())


def test_a_trickling_stream_is_cut_at_its_deadline_and_frees_slot_and_ticket(
    cluster: TiersCluster,
) -> None:
    url = f"{cluster.url}/v1/chat/completions"
    t0 = time.monotonic()
    with httpx.stream("POST", url, json=STREAM, headers=TRICKLE, timeout=60) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        assert next(line for line in lines if line.startswith("data: {"))
        # While it runs it holds the tier's only slot and the tenant's only ticket.
        busy = post(cluster, STREAM, AUTH)
        assert busy.status_code == 503 and busy.json()["error"]["code"] == "tier_at_capacity"
        assert post(cluster, SMALL, TRICKLE).status_code == 429
        events = [line[6:] for line in lines if line.startswith("data: ")]
    took = time.monotonic() - t0
    assert REQUEST_TIMEOUT_S - 1 <= took < REQUEST_TIMEOUT_S + 10, took
    assert events[-1] == "[DONE]" and "request_timeout_s" in events[-2]
    # Both were freed when the deadline fired...
    assert post(cluster, SMALL, TRICKLE).status_code == 200
    assert stream_starts(cluster, TRICKLE)
    # ...and again when the client left (the stream above was closed after one chunk).
    assert eventually(lambda: post(cluster, SMALL, TRICKLE).status_code == 200)
    assert eventually(lambda: stream_starts(cluster, AUTH))


def test_failover_never_leaves_the_tenants_tiers(cluster: TiersCluster) -> None:
    """Tenant `narrow` may use only `ext-refused-fb`, whose fallback is `small`: its
    request fails rather than being answered by `small`."""
    narrow = {"Authorization": f"Bearer {TENANT_KEYS['narrow']}"}
    body = {"model": "ext-refused-fb", "messages": MSG, "max_tokens": 4}
    r = post(cluster, body, narrow)
    assert r.status_code in (502, 503), r.text  # 503 while the tier is marked down
    assert r.headers["x-tierline-tier"] == "ext-refused-fb"
    assert "+fallback" not in r.headers["x-tierline-route-reason"]
    assert "127.0.0.1" not in r.text and "http://" not in r.text  # no upstream URL
    assert post(cluster, {**body, "model": "tiny-small"}, narrow).status_code == 403
