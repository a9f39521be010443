from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tierline.cli.main import app
from tierline.cluster.render import (
    IMPORT_PATH,
    LOCAL_ONLY_GATEWAY_FIELDS,
    RenderError,
    serve_config,
)
from tierline.cluster.spec import deployment_name
from tierline.cluster.specfile import load_spec, parse_spec
from tierline.deployments.engine import llm_config_kwargs
from typer.testing import CliRunner

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_serve_config_passes_rays_own_schema(path: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    spec = load_spec(path)
    if any(getattr(spec.gateway, f) for f in LOCAL_ONLY_GATEWAY_FIELDS):
        # configs/bench.yaml: refused as it is, rendered once its local-only settings are off
        with pytest.raises(RenderError, match="local runs"):
            serve_config(spec)
        off = spec.gateway.model_copy(update=dict.fromkeys(LOCAL_ONLY_GATEWAY_FIELDS, False))
        spec = spec.model_copy(update={"gateway": off})
    config = serve_config(spec)
    parsed = ServeDeploySchema.model_validate(config)
    (application,) = parsed.applications
    assert application.import_path == IMPORT_PATH
    assert application.route_prefix == "/"
    assert parsed.http_options.port == spec.gateway.port
    # the spec travels whole: the app builder gets back exactly this spec
    assert parse_spec(application.args["spec"]) == spec


def test_cli_render_serve_writes_yaml(root: Path) -> None:
    res = CliRunner().invoke(app, ["render", "serve", str(root / "configs/local.yaml")])
    assert res.exit_code == 0, res.output
    assert yaml.safe_load(res.output) == serve_config(load_spec(root / "configs/local.yaml"))


@pytest.mark.parametrize("field", LOCAL_ONLY_GATEWAY_FIELDS)
def test_local_only_settings_are_refused_not_dropped(root: Path, field: str) -> None:
    spec = load_spec(root / "configs/local.yaml")
    spec = spec.model_copy(update={"gateway": spec.gateway.model_copy(update={field: True})})
    with pytest.raises(RenderError, match=f"gateway.{field}: local runs"):
        serve_config(spec)
    path = root / "configs/local.yaml"
    res = CliRunner().invoke(app, ["render", "serve", str(path)])
    assert res.exit_code == 0


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_tier_makes_a_valid_llm_config(path: Path) -> None:
    from ray.serve.llm import LLMConfig

    for tier in load_spec(path).engine_tiers:  # external tiers run no engine
        kwargs = llm_config_kwargs(tier)
        config = LLMConfig(**kwargs)
        engine = config.engine_kwargs
        assert engine["max_model_len"] == tier.max_context_tokens
        assert engine["tensor_parallel_size"] == tier.tensor_parallel_size
        assert engine["pipeline_parallel_size"] == tier.pipeline_parallel_size
        assert config.model_id == tier.model_name
        dc = config.deployment_config
        if tier.autoscaling is not None:
            assert dc["autoscaling_config"]["max_replicas"] == tier.autoscaling.max_replicas
        else:
            assert dc["num_replicas"] == tier.num_replicas
        if tier.uses_gpu:
            assert config.accelerator_type == tier.accelerator_type
            gpus = tier.tensor_parallel_size * tier.pipeline_parallel_size
            assert config.placement_group_config == {
                "bundles": [{"GPU": 1.0}] * gpus,
                "strategy": "STRICT_PACK" if tier.pipeline_parallel_size == 1 else "PACK",
            }
        else:
            assert kwargs["placement_group_config"] == {"bundles": [{"CPU": 1.0}]}
        assert deployment_name(tier) == f"tier-{tier.name}"
