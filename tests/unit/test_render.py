from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tierline.cli.main import app
from tierline.cluster.render import IMPORT_PATH, ray_process_env, serve_config
from tierline.cluster.spec import deployment_name
from tierline.cluster.specfile import load_spec, parse_spec
from tierline.deployments.engine.deployment import llm_config_kwargs
from typer.testing import CliRunner

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_serve_config_passes_rays_own_schema(path: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    spec = load_spec(path)
    config = serve_config(spec)
    parsed = ServeDeploySchema.model_validate(config)
    (application,) = parsed.applications
    assert application.import_path == IMPORT_PATH
    assert application.route_prefix == "/"
    # the gateway replicas hold gateway.port (one per node); the idle proxy another port
    assert parsed.http_options.port != spec.gateway.port
    (gateway,) = application.deployments
    assert gateway.name == "gateway" and gateway.max_replicas_per_node == 1
    # the spec travels whole: the app builder gets back exactly this spec
    assert parse_spec(application.args["spec"]) == spec


def test_cli_render_serve_writes_yaml_headed_by_the_nodes_environment(root: Path) -> None:
    path = root / "configs/local.yaml"
    res = CliRunner().invoke(app, ["render", "serve", str(path)])
    assert res.exit_code == 0, res.output
    spec = load_spec(path)
    assert yaml.safe_load(res.output) == serve_config(spec)
    header = [line for line in res.output.splitlines() if line.startswith("#")]
    for name, value in ray_process_env(spec).items():
        assert f"#   {name}={value}" in header
    env = CliRunner().invoke(app, ["render", "ray-env", str(path)])
    assert env.exit_code == 0, env.output
    assert dict(line.split("=", 1) for line in env.output.splitlines()) == ray_process_env(spec)


def test_the_old_path_switches_are_refused_with_a_reason() -> None:
    from tierline.cluster.specfile import SpecError

    base = {"tiers": [{"name": "s", "model_source": "org/s", "max_context_tokens": 256}]}
    for field in ("direct_ingress", "grpc_between_deployments"):
        with pytest.raises(SpecError, match=f"{field}: removed"):
            parse_spec({**base, "gateway": {field: True}})


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


def test_the_gateway_refuses_a_ray_cluster_without_direct_ingress(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A `serve deploy` onto Ray nodes started without `ray-env` fails with what to set,
    instead of serving the slow path behind Serve's proxy on another port."""
    from ray.serve._private import constants
    from tierline.deployments.app import check_direct_ingress

    monkeypatch.setattr(constants, "RAY_SERVE_ENABLE_DIRECT_INGRESS", False)
    monkeypatch.delenv("RAY_SERVE_ENABLE_DIRECT_INGRESS", raising=False)
    with pytest.raises(RuntimeError, match="RAY_SERVE_ENABLE_DIRECT_INGRESS=1") as err:
        check_direct_ingress()
    assert "tierline render serve" in str(err.value)
    monkeypatch.setattr(constants, "RAY_SERVE_ENABLE_DIRECT_INGRESS", True)
    check_direct_ingress()  # on: nothing to say
