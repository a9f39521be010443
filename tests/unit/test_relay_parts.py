"""The relay's parts: engine errors, replica choice and prefix affinity, the relay registry,
a stopping replica, event framing and paced streams (the harness: `relay_fakes`)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from tierline.deployments.engine.relay_registry import (
    MemoryKV,
    cluster_token,
    fetch_relays,
    live_relays,
    publish,
    read_relays,
    replica_ids,
)
from tierline.deployments.engine.relay_server import RelayMiddleware, relay_key, start_relay_server
from tierline.deployments.gateway.engines.engine_client import EngineError
from tierline.deployments.gateway.engines.relay import (
    RelayDirectory,
    RelayEngineClient,
    engine_error_of,
)
from tierline.deployments.gateway.engines.replica_choice import (
    PrefixMemory,
    blocks,
    choose_replica,
    prefix_text,
)

from tests.unit.fakes import FakeEngine
from tests.unit.relay_fakes import (
    TOKEN,
    EngineApp,
    chat,
    data_lines,
    gateway,
    relays,
    wait_until,
)


# -- pure parts ---------------------------------------------------------------------------------
def test_engine_error_shapes() -> None:
    assert engine_error_of(400, b'{"error": {"message": "bad", "type": "BadRequestError"}}') == (
        EngineError(400, "bad", "BadRequestError")
    )
    assert engine_error_of(404, b'{"object": "error", "message": "no model"}').message == (
        "no model"
    )
    assert engine_error_of(400, b"not json").message == "not json"


def test_choose_replica_spreads_and_prefers_the_less_loaded() -> None:
    rng = random.Random(7)
    loads = {f"r{i}": 0 for i in range(4)}
    counts = dict.fromkeys(loads, 0)
    for _ in range(4000):
        counts[choose_replica(loads, rng=rng)] += 1
    assert all(800 < n < 1200 for n in counts.values()), counts
    # power of two choices: a replica more loaded than all others is never picked
    for _ in range(500):
        loads = {f"r{i}": rng.randrange(10) for i in range(5)}
        top = max(loads.values())
        pick = choose_replica(loads, rng=rng)
        assert loads[pick] < top or list(loads.values()).count(top) > 1
    assert choose_replica({"only": 99}) == "only"
    with pytest.raises(ValueError):
        choose_replica({})


def _prompt(seed: int, words: int = 200) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(["tier", "cache", "token", "replica", "gpu"]) for _ in range(words))


def test_prefix_affinity_keeps_conversations_and_spreads_new_ones() -> None:
    rng = random.Random(3)
    memory = PrefixMemory()
    replicas = ["r0", "r1", "r2"]
    loads = dict.fromkeys(replicas, 0)

    def route(text: str) -> str:
        keys = blocks(text)
        matches = {r: memory.match(r, keys) for r in replicas}
        sizes = {r: memory.size(r) for r in replicas}
        pick = choose_replica(loads, matches, sizes, imbalance=4, rng=rng)
        memory.record(pick, keys)
        return pick

    homes = {}
    for conv in range(30):
        history = f"system:{_prompt(conv)}\n"
        seen = set()
        for turn in range(5):
            history += f"user:question {turn}\nassistant:answer {turn}\n"
            seen.add(route(history))
        assert len(seen) == 1, (conv, seen)  # every turn on one replica
        homes[conv] = seen.pop()
    spread = [list(homes.values()).count(r) for r in replicas]
    assert min(spread) >= 8, spread  # new conversations go where the least text is held
    # a busy preferred replica: past the imbalance, power of two choices instead
    loads = {"r0": 0, "r1": 0, "r2": 0}
    home = homes[0]
    loads[home] = 5
    text = f"system:{_prompt(0)}\n"
    keys = blocks(text)
    matches = {r: memory.match(r, keys) for r in replicas}
    picks = {choose_replica(loads, matches, None, imbalance=4, rng=rng) for _ in range(50)}
    assert home not in picks
    loads[home] = 4
    assert choose_replica(loads, matches, None, imbalance=4, rng=rng) == home


def test_prefix_memory_matches_leading_blocks_and_stays_bounded() -> None:
    memory = PrefixMemory(max_blocks=10)
    a = blocks("x" * 128 * 5)
    assert len(a) == 5 and blocks("x" * 100) == []
    memory.record("r", a[:3])
    assert memory.match("r", a) == 3 and memory.match("other", a) == 0
    assert memory.match("r", blocks("y" * 128 * 5)) == 0
    memory.record("r", blocks("z" * 128 * 20))
    assert memory.size("r") == 10
    memory.keep_only(["s"])
    assert memory.size("r") == 0


def test_prefix_text_reads_the_prompts_start() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "S" * 600},
            {"role": "user", "content": "question"},
        ]
    }
    text = prefix_text("chat", body, chars=512)
    assert len(text) == 512 and text.startswith("system:SSS")
    longer = {"messages": [*body["messages"], {"role": "assistant", "content": "a"}]}
    assert prefix_text("chat", longer).startswith(prefix_text("chat", body))
    assert prefix_text("completions", {"prompt": "abc"}) == "abc"
    assert prefix_text("chat", {"messages": []}) == ""
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    assert prefix_text("chat", parts) == "user:hi\n"


def test_registry_token_publish_and_liveness() -> None:
    kv = MemoryKV()
    token = cluster_token(kv)
    assert len(token) >= 32 and cluster_token(kv) == token  # first writer wins
    publish(kv, "app", "tier-small", "a", "http://10.0.0.1:5000")
    publish(kv, "app", "tier-small", "b", "http://10.0.0.2:5000")
    publish(kv, "app", "tier-large", "c", "http://10.0.0.3:5000")
    kv.put(relay_key("app", "tier-small", "junk"), b"not json")
    assert read_relays(kv, "app", "tier-small") == {
        "a": "http://10.0.0.1:5000",
        "b": "http://10.0.0.2:5000",
    }
    live, stale = live_relays({"a": "u1", "b": "u2", "z": "u3"}, running={"a"}, known={"a", "b"})
    assert live == {"a": "u1"} and stale == ["z"]
    details = {
        "applications": {
            "app": {
                "deployments": {
                    "tier-small": {
                        "replicas": [
                            {"replica_id": "a", "state": "RUNNING"},
                            {"replica_id": "n", "state": "STARTING"},
                        ]
                    }
                }
            }
        }
    }
    assert replica_ids(details, "app", "tier-small") == ({"a"}, {"a", "n"})
    found = fetch_relays(kv, details, "app", {"small": "tier-small"})
    assert found == {"small": {"a": "http://10.0.0.1:5000"}}
    assert read_relays(kv, "app", "tier-small") == {"a": "http://10.0.0.1:5000"}  # b pruned
    # an answer without the app prunes nothing
    publish(kv, "app", "tier-small", "b", "http://10.0.0.2:5000")
    assert fetch_relays(kv, {}, "app", {"small": "tier-small"}) == {"small": {}}
    assert "b" in read_relays(kv, "app", "tier-small")


def test_directory_benches_a_failing_replica_for_a_while() -> None:
    now = [0.0]
    d = RelayDirectory(clock=lambda: now[0])
    d.set("small", {"a": "u1", "b": "u2"})
    d.bench("a")
    assert d.urls("small") == {"b": "u2"}
    now[0] = 10.0
    assert d.urls("small") == {"a": "u1", "b": "u2"}


@asynccontextmanager
async def relayed_app(app: Any) -> AsyncIterator[RelayDirectory]:
    """`app` behind a real relay server (the engine replica's door), and a directory
    naming it as tier `small`'s one replica."""

    async def load(name: str) -> None:
        return None

    handle = await start_relay_server(RelayMiddleware(app, TOKEN, load), "127.0.0.1")
    directory = RelayDirectory()
    directory.token = TOKEN
    directory.set("small", {"r": handle.url})
    try:
        yield directory
    finally:
        await handle.stop()


async def test_a_stopping_replica_waits_for_the_requests_it_relays() -> None:
    engine = EngineApp("r1", delay_s=0.05)

    async def load(name: str) -> None:
        return None

    gate = RelayMiddleware(engine.app(), TOKEN, load)
    handle = await start_relay_server(gate, "127.0.0.1")
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            body = chat(stream=True, max_tokens=10)
            headers = {"x-tierline-relay-token": TOKEN}
            call = asyncio.ensure_future(
                http.post(handle.url + "/v1/chat/completions", json=body, headers=headers)
            )
            await wait_until(lambda: gate.active == 1)
            assert await gate.drained(0.05) == 1  # still running: the wait gives up
            assert await gate.drained(5.0) == 0  # then it ends, whole
            r = await call
            assert data_lines(r.text)[-1] == "[DONE]" and engine.finished == [""]
    finally:
        await handle.stop()


async def test_relayed_items_hold_whole_events_however_the_bytes_were_cut() -> None:
    parts = [
        b'data: {"a":1}\n\ndata: {"b"',
        b":2}\n",
        b'\ndata: {"usage":{"total_tokens":3}}',
        b"\n\n",
        b"data: [DONE]\n\n",
    ]

    async def engine(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for p in parts:
            await send({"type": "http.response.body", "body": p, "more_body": True})
            await asyncio.sleep(0.02)
        await send({"type": "http.response.body", "body": b""})

    async with relayed_app(engine) as directory:
        client = RelayEngineClient("small", FakeEngine("x"), directory)
        try:
            items = [i async for i in client.generate("chat", {"model": "x", "stream": True})]
        finally:
            await client.close()
    assert all(isinstance(i, bytes) and i.endswith(b"\n\n") for i in items), items
    assert b"".join(items) == b"".join(parts)  # type: ignore[arg-type]


async def test_a_relayed_stream_is_paced_by_the_gateways_interval() -> None:
    """The gateway asks the replica to pace a stream (`gateway.stream_interval_ms`): the
    replica writes a burst of tokens in few writes, the first two at once, every byte in
    order; a whole answer and an unpaced stream are written as the app wrote them."""
    writes: list[int] = []

    async def engine(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        writes.append(0)
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i in range(30):
            await send(
                {"type": "http.response.body", "body": b"data: %d\n\n" % i, "more_body": True}
            )
            await asyncio.sleep(0.001)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    expected = b"".join(b"data: %d\n\n" % i for i in range(30)) + b"data: [DONE]\n\n"
    async with relayed_app(engine) as directory:
        paced = RelayEngineClient("small", FakeEngine("x"), directory, stream_interval_ms=200)
        plain = RelayEngineClient("small", FakeEngine("x"), directory)
        try:
            items = [i async for i in paced.generate("chat", {"model": "x", "stream": True})]
            assert b"".join(items) == expected  # type: ignore[arg-type]
            assert len(items) <= 5, items  # two at once, the rest in one to three writes
            assert items[0] == b"data: 0\n\n"
            unpaced = [i async for i in plain.generate("chat", {"model": "x", "stream": True})]
            assert b"".join(unpaced) == expected  # type: ignore[arg-type]
        finally:
            await paced.close()
            await plain.close()


async def test_the_pace_header_goes_with_streams_only() -> None:
    engine = EngineApp("r1")
    async with (
        relays(engine) as urls,
        gateway({"small": urls}) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=10) as http,
    ):
        await http.post("/v1/chat/completions", json=chat(stream=True))
        await http.post("/v1/chat/completions", json=chat())
    assert engine.headers[0]["x-tierline-stream-interval-ms"] == "20"
    assert "x-tierline-stream-interval-ms" not in engine.headers[1]


async def test_the_relay_asks_vllm_for_tokens_per_event_from_the_tiers_pace() -> None:
    engine = EngineApp("r1")
    async with relays(engine) as urls:
        directory = RelayDirectory()
        directory.token = TOKEN
        directory.set("small", urls)
        client = RelayEngineClient("small", FakeEngine("x"), directory, stream_interval_ms=20)
        body = {"model": "x", "stream": True, "max_tokens": 3, "messages": []}
        try:
            [i async for i in client.generate("chat", body)]
            assert "stream_interval" not in engine.seen[0]  # the pace is not known yet
            client.pace.token_s = 0.005  # 5 ms a token: four fit 20 ms
            [i async for i in client.generate("chat", body)]
            assert engine.seen[1]["stream_interval"] == 4
            assert "stream_interval" not in body  # the caller's body is not changed
            [i async for i in client.generate("chat", {**body, "stream_interval": 1})]
            assert engine.seen[2]["stream_interval"] == 1  # one the request set stays
            [i async for i in client.generate("chat", {**body, "stream": False})]
            assert "stream_interval" not in engine.seen[3]  # a whole answer: no events
        finally:
            await client.close()
