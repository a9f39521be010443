"""The Serve application: tier engine deployments plus the gateway ingress.

`build_app` is the `import_path` target of rendered `serve deploy` configs
(`deployments.app:build_app`, args `{"spec": {...}}`) and what `tierline up` runs, so a
local run and a cluster deploy build the same graph from the same spec.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve.deployment import Application
from ray.serve.handle import DeploymentHandle

from cluster.spec import ClusterSpec
from cluster.specfile import parse_spec
from deployments.engine import build_tier_app
from deployments.engine_client import ServeEngineClient, import_request_models
from deployments.gateway import GatewayCore, create_app
from deployments.tokens import load_counter

GATEWAY_DEPLOYMENT = "gateway"


@serve.ingress()
class Gateway:
    """Thin Serve wrapper: real engine handles and tokenizers into `GatewayCore`."""

    def __init__(self, spec_data: dict[str, Any], engines: dict[str, DeploymentHandle]) -> None:
        self._spec = parse_spec(spec_data, "gateway args")
        self._engines = engines

    async def __serve_build_asgi_app__(self) -> Any:
        # Replica start-up: tokenizers are loaded here, not at import or construction.
        import_request_models()
        counters = {t.name: load_counter(t.model_source) for t in self._spec.tiers}
        clients = {
            t.name: ServeEngineClient(self._engines[t.name], t.model_name) for t in self._spec.tiers
        }
        return create_app(GatewayCore(self._spec, clients, counters))


def gateway_options(spec: ClusterSpec) -> dict[str, Any]:
    return {
        "name": GATEWAY_DEPLOYMENT,
        "num_replicas": spec.gateway.replicas,
        "max_ongoing_requests": 1024,
        "ray_actor_options": {"num_cpus": 0.5},
    }


def build_graph(spec: ClusterSpec) -> Application:
    engines = {t.name: build_tier_app(t) for t in spec.tiers}
    gateway = serve.deployment(**gateway_options(spec))(Gateway)
    return gateway.bind(spec.model_dump(mode="json"), engines)


def build_app(args: dict[str, Any]) -> Application:
    """Application builder for `serve run`/`serve deploy`: args are `{"spec": <spec>}`."""
    if "spec" not in args:
        raise ValueError("tierline's application args need a 'spec' key holding the spec")
    return build_graph(parse_spec(args["spec"], "application args.spec"))
