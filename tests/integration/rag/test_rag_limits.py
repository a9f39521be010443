"""Bounded work and key reload on the live RAG cluster (issue 16).

A parse bomb and a filter bomb are refused with a 4xx naming the limit while the gateway
and the RAG replica keep answering other requests within a second; a key added to the
keys file works, and a key removed is refused, while the cluster runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
from tierline.deployments.gateway.pipeline.auth import add_key, remove_keys

from tests.integration.conftest import KEYS_FILE
from tests.integration.rag.conftest import RagCluster

BOMB = b"<b>" * 300_000  # 900 KB of nested tags: 5 s and 200 MB in BeautifulSoup
KEY_RELOAD_S = 10  # issue 16: a keys-file change holds on every replica within 10 s


def answering_while(cluster: RagCluster, work: Callable[[], httpx.Response]) -> tuple:
    """Run `work` while another client searches and lists without pause: its response and
    the slowest of the other requests (which each must succeed)."""
    done = threading.Event()
    others: list[float] = []
    failures: list[str] = []

    def other_requests() -> None:
        with cluster.http() as http:
            while not done.is_set():
                for method, path, body in (
                    ("POST", "/v1/rag/collections/limits/search", {"query": "alpha"}),
                    ("GET", "/v1/rag/collections", None),
                ):
                    t0 = time.perf_counter()
                    r = http.request(method, path, json=body)
                    others.append(time.perf_counter() - t0)
                    if r.status_code != 200:
                        failures.append(f"{path}: {r.status_code} {r.text[:200]}")
                time.sleep(0.05)

    thread = threading.Thread(target=other_requests, daemon=True)
    thread.start()
    time.sleep(0.3)
    try:
        resp = work()
    finally:
        time.sleep(0.3)
        done.set()
        thread.join(timeout=30)
    assert not failures, failures
    assert len(others) >= 4
    return resp, max(others)


def _seeded(cluster: RagCluster) -> None:
    with cluster.http() as http:
        assert http.post("/v1/rag/collections", json={"name": "limits"}).status_code in (200, 201)
        docs = [{"id": f"d{i}", "text": f"alpha beta {i}", "metadata": {"n": i}} for i in range(50)]
        r = http.post("/v1/rag/collections/limits/documents", json={"documents": docs})
        assert r.status_code == 200, r.text


def test_a_parse_bomb_is_refused_while_others_are_answered(rag_cluster: RagCluster) -> None:
    _seeded(rag_cluster)
    with rag_cluster.http() as http:

        def upload() -> httpx.Response:
            files = {"file": ("bomb.html", BOMB, "text/html")}
            return http.post("/v1/rag/collections/limits/documents", files=files)

        resp, slowest = answering_while(rag_cluster, upload)
    assert resp.status_code == 422, resp.text
    err = resp.json()["error"]
    assert err["code"] == "parse_timeout" and "rag.parse_timeout_s" in err["message"]
    assert slowest < 1.0, f"another request took {slowest:.2f} s during the parse bomb"


def test_a_filter_bomb_is_refused_while_others_are_answered(rag_cluster: RagCluster) -> None:
    _seeded(rag_cluster)
    with rag_cluster.http() as http:
        body = {"query": "alpha", "filter": {"n": {"$in": list(range(100_000))}}}

        def search() -> httpx.Response:
            return http.post("/v1/rag/collections/limits/search", json=body)

        resp, slowest = answering_while(rag_cluster, search)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["code"] == "invalid_filter" and "at most 1024" in err["message"]
    assert slowest < 1.0, f"another request took {slowest:.2f} s during the filter bomb"


def _status_within(cluster: RagCluster, key: str, want: int, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    with cluster.http(key) as http:
        while True:
            status = http.get("/v1/models").status_code
            if status == want or time.monotonic() > deadline:
                return status
            time.sleep(0.25)


def test_a_key_added_and_a_key_removed_while_the_cluster_runs(rag_cluster: RagCluster) -> None:
    doomed = add_key(KEYS_FILE, "tests-doomed")
    late = None
    try:
        assert _status_within(rag_cluster, doomed, 200, KEY_RELOAD_S) == 200
        late = add_key(KEYS_FILE, "tests-late")
        assert remove_keys(KEYS_FILE, key=doomed) == 1
        assert _status_within(rag_cluster, late, 200, KEY_RELOAD_S) == 200
        assert _status_within(rag_cluster, doomed, 401, KEY_RELOAD_S) == 401
    finally:
        remove_keys(KEYS_FILE, key=doomed)
        if late is not None:
            remove_keys(KEYS_FILE, key=late)
