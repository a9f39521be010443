"""LoRA adapters without Ray: the spec, the engine config they produce, and the gateway's
name resolution, /v1/models and failover rules for adapter requests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tierline.cluster.specfile import SpecError, load_spec, load_spec_text, parse_spec, spec_to_data
from tierline.deployments.engine.adapters import (
    SOURCES_KEY,
    AdapterSourceError,
    adapter_sources,
    check_local_sources,
    lora_engine_kwargs,
)
from tierline.deployments.engine.deployment import llm_config_kwargs
from tierline.deployments.gateway import GatewayCore, create_app
from tierline.deployments.gateway.pipeline.tokens import EstimatingCounter

from tests.unit.fakes import FakeEngine

SPEC = """
tiers:
  - name: small
    model_source: org/small
    served_model_name: small-model
    max_context_tokens: 256
    fallback_tier: large
    max_adapters_per_replica: 2
    adapters:
      - name: support
        source: ./adapters/support
      - name: legal
        source: s3://bucket/legal
        served_model_name: legal-bot
  - name: large
    model_source: org/large
    max_context_tokens: 1024
"""


def spec_in(tmp_path: Path, text: str = SPEC):
    (tmp_path / "spec.yaml").write_text(text)
    return load_spec(tmp_path / "spec.yaml")


def test_adapters_resolve_by_every_name(tmp_path: Path) -> None:
    spec = spec_in(tmp_path)
    small = spec.tier("small")
    support, legal = small.adapters
    assert support.source == str(tmp_path / "adapters" / "support")  # relative to the spec
    assert legal.source == "s3://bucket/legal"
    for name in ("small:support", "small-model:support"):
        assert spec.resolve_adapter(name) == (small, support)
        assert spec.resolve_model(name) is small
    for name in ("small:legal", "small-model:legal", "legal-bot"):
        assert spec.resolve_adapter(name) == (small, legal)
    assert spec.resolve_adapter("small-model") is None
    assert spec.resolve_adapter("small:nope") is None and spec.resolve_model("small:nope") is None
    assert adapter_sources(small) == {
        "small-model:support": support.source,
        "small-model:legal": "s3://bucket/legal",
    }
    assert parse_spec(spec_to_data(spec)) == spec


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("name: legal", "name: support", "adapter names must be unique"),
        ("source: s3://bucket/legal", "source: http://x/legal", "neither a local path"),
        ("served_model_name: legal-bot", "served_model_name: large", "already used"),
        ("served_model_name: legal-bot", "served_model_name: small:support", "already used"),
        ("served_model_name: legal-bot", "served_model_name: auto", "reserved"),
    ],
)
def test_adapter_validation(old: str, new: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        load_spec_text(SPEC.replace(old, new))


def test_engine_config_turns_lora_on_only_with_adapters(tmp_path: Path) -> None:
    spec = spec_in(tmp_path)
    kwargs = llm_config_kwargs(spec.tier("small"))
    assert kwargs["lora_config"] == {"max_num_adapters_per_replica": 2}
    # The engine's adapter loader finds each source by its engine id here.
    assert kwargs["experimental_configs"][SOURCES_KEY] == adapter_sources(spec.tier("small"))
    engine = kwargs["engine_kwargs"]
    assert engine["enable_lora"] is True and engine["max_lora_rank"] == 16
    assert engine["max_loras"] == 2 and engine["max_cpu_loras"] == 2
    plain = llm_config_kwargs(spec.tier("large"))
    assert "lora_config" not in plain and "enable_lora" not in plain["engine_kwargs"]
    assert lora_engine_kwargs(spec.tier("large")) == {}


def test_missing_local_adapter_fails_at_deploy_time(tmp_path: Path) -> None:
    spec = spec_in(tmp_path)
    with pytest.raises(AdapterSourceError, match="support"):
        check_local_sources(spec.tier("small"))
    target = tmp_path / "adapters" / "support"
    target.mkdir(parents=True)
    (target / "adapter_config.json").write_text("{}")
    check_local_sources(spec.tier("small"))  # the s3:// one is fetched by the engine


def make(tmp_path: Path, fail: str | None = None) -> tuple[TestClient, dict[str, FakeEngine]]:
    spec = spec_in(tmp_path)
    engines = {
        "small": FakeEngine("small-model", fail),
        "large": FakeEngine("large"),
    }
    core = GatewayCore(spec, engines, {t.name: EstimatingCounter() for t in spec.tiers})
    return TestClient(create_app(core), raise_server_exceptions=False), engines


def chat(model: str, **kw: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, **kw}


def test_gateway_sends_adapter_requests_with_the_engine_id(tmp_path: Path) -> None:
    client, engines = make(tmp_path)
    with client:
        for name, engine_id in [
            ("small:support", "small-model:support"),
            ("small-model:support", "small-model:support"),
            ("legal-bot", "small-model:legal"),
            ("small-model", "small-model"),
        ]:
            resp = client.post("/v1/chat/completions", json=chat(name))
            assert resp.status_code == 200, resp.text
            assert resp.headers["x-tierline-tier"] == "small"
            assert engines["small"].calls[-1][1]["model"] == engine_id
        resp = client.post("/v1/chat/completions", json=chat("small:nope"))
        assert resp.status_code == 404
        assert resp.json()["error"]["code"] == "model_not_found"


def test_models_lists_adapters(tmp_path: Path) -> None:
    client, _ = make(tmp_path)
    with client:
        cards = {c["id"]: c for c in client.get("/v1/models").json()["data"]}
        assert {"small-model:support", "legal-bot"} <= set(cards)
        assert cards["legal-bot"]["parent"] == "small-model"
        assert cards["legal-bot"]["tier"] == "small"
        one = client.get("/v1/models/small:legal")
        assert one.status_code == 200 and one.json()["id"] == "legal-bot"


def test_adapter_requests_do_not_fall_back(tmp_path: Path) -> None:
    """The fallback tier has no such adapter: its base model would answer something else."""
    client, engines = make(tmp_path, fail="before")
    with client:
        resp = client.post("/v1/chat/completions", json=chat("small:support"))
        assert resp.status_code == 503
        assert engines["large"].calls == []
        # A base-model request to the same tier does fall back.
        resp = client.post("/v1/chat/completions", json=chat("large"))
        assert resp.status_code == 200
