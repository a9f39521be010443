"""Property-based fuzzing of every route from the gateway's own OpenAPI schema.

Whatever schemathesis generates (valid and invalid bodies, odd paths, wrong types), the
gateway answers without a 5xx and without crashing.
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import hypothesis
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from tierline.cluster.spec import AuthSpec
from tierline.deployments.gateway.pipeline.auth import add_key, load_key_store

from tests.unit.test_gateway import make

CASES_PER_OPERATION = 300
MIN_CASES = 1000


def test_fuzz_every_route_no_server_errors(tmp_path: Path) -> None:
    key = add_key(tmp_path / "keys.json", "fuzz")
    store = load_key_store(AuthSpec(keys_file=str(tmp_path / "keys.json")), environ={})
    client, _ = make(keys=store)
    schema = schemathesis.openapi.from_asgi(
        "/openapi.json", client.app, headers={"Authorization": f"Bearer {key}"}
    )
    seen: list[tuple[str, str, int]] = []
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) >= 6
    paths = {op.path for op in operations}
    # The Responses API: create, retrieve and delete are fuzzed like every route.
    assert {"/v1/responses", "/v1/responses/{response_id}"} <= paths, paths

    for op, mode in itertools.product(operations, list(GenerationMode)):
        strategy = op.as_strategy(generation_mode=mode)

        @settings(
            max_examples=CASES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[hypothesis.Phase.generate],
        )
        @hypothesis.given(case=strategy)
        def one(case) -> None:  # type: ignore[no-untyped-def]
            resp = case.call(headers={"Authorization": f"Bearer {key}"})
            seen.append((case.method, case.path, resp.status_code))
            assert resp.status_code < 500, (case.method, case.formatted_path, case.body, resp.text)

        try:
            one()
        except hypothesis.errors.Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # nothing to break in a parameterless GET
    print(f"fuzzed {len(seen)} cases, statuses {sorted(Counter(s for *_, s in seen).items())}")
    assert len(seen) >= MIN_CASES, len(seen)
    statuses = {s for *_, s in seen}
    assert 200 in statuses and any(400 <= s < 500 for s in statuses)
