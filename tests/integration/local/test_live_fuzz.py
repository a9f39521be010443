"""Property-based fuzzing of the running cluster over HTTP, from the gateway's own OpenAPI
schema: Serve's proxy, the gateway and the real engines together answer whatever
schemathesis generates without a 5xx.

The in-process run (tests/unit/test_fuzz_gateway.py) covers 1,000+ cases against the ASGI
app; this one sends some hundreds through the live endpoint. Valid generation requests
name a real model (a random `model` string would only ever get a 404) and reach real vLLM
engines, so their `max_tokens` and `n` are capped to keep the run short (the bounds
themselves are fuzzed in-process).
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import hypothesis
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode

from tests.integration.conftest import AUTH
from tests.integration.local.conftest import Cluster

GENERATION_CASES = 100  # per generation route and mode
OTHER_CASES = 20
MIN_CASES = 300
MAX_TOKENS = 16
MAX_N = 2


def capped(body: Any, model: str) -> Any:
    """A valid generation body for `model` with a small budget: the engines run it fast."""
    if isinstance(body, dict):
        body = dict(body)
        body["model"] = model
        if isinstance(body.get("max_tokens"), int) and body["max_tokens"] > MAX_TOKENS:
            body["max_tokens"] = MAX_TOKENS
        if isinstance(body.get("max_completion_tokens"), int):
            body["max_completion_tokens"] = min(body["max_completion_tokens"], MAX_TOKENS)
        if "max_tokens" not in body and "max_completion_tokens" not in body:
            body["max_tokens"] = MAX_TOKENS
        if isinstance(body.get("n"), int) and body["n"] > MAX_N:
            body["n"] = MAX_N
    return body


def test_fuzz_the_live_endpoint_no_server_errors(cluster: Cluster) -> None:
    schema = schemathesis.openapi.from_url(f"{cluster.url}/openapi.json", headers=AUTH)
    models = itertools.cycle(["auto", *(t.model_name for t in cluster.spec.tiers)])
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) >= 6
    seen: list[tuple[str, str, int]] = []

    for op, mode in itertools.product(operations, list(GenerationMode)):
        generation = op.method.upper() == "POST" and op.path.endswith("completions")
        cap = generation and mode is GenerationMode.POSITIVE
        strategy = op.as_strategy(generation_mode=mode)

        @settings(
            max_examples=GENERATION_CASES if generation else OTHER_CASES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[hypothesis.Phase.generate],
        )
        @hypothesis.given(case=strategy)
        def one(case: Any) -> None:
            if cap:  # noqa: B023 (one() runs inside this iteration)
                case.body = capped(case.body, next(models))
            resp = case.call(headers=AUTH, timeout=120)
            label = f"{case.method}:{mode.value}"  # noqa: B023 (runs inside this iteration)
            seen.append((label, case.path, resp.status_code))
            assert resp.status_code < 500, (
                case.method,
                case.formatted_path,
                case.body,
                resp.status_code,
                resp.text[:500],
            )

        try:
            one()
        except hypothesis.errors.Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # nothing to break in a parameterless GET

    statuses = Counter(s for *_, s in seen)
    by_route = Counter(f"{m} {p} {s}" for m, p, s in seen)
    print(f"live fuzz: {len(seen)} cases, statuses {sorted(statuses.items())}")
    print(f"live fuzz by route, mode and status: {sorted(by_route.items())}")
    assert len(seen) >= MIN_CASES, len(seen)
    assert any(400 <= s < 500 for s in statuses)
    # valid generation bodies went through the engines, not only the gateway's checks
    answered = sum(1 for m, p, s in seen if m.startswith("POST") and s == 200)
    assert answered >= 10, answered
    # the cluster still serves afterwards
    ok = cluster.client().chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert ok.choices
