"""The Serve application: tier engine deployments plus the gateway ingress.

`build_app` is the `import_path` target of rendered `serve deploy` configs
(`tierline.deployments.app:build_app`, args `{"spec": {...}}`) and what `tierline up` runs, so a
local run and a cluster deploy build the same graph from the same spec.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.deployment import Application
from ray.serve.handle import DeploymentHandle
from tierline.cluster.render import GATEWAY_DEPLOYMENT, REQUEST_PATH_PROCESS_ENV
from tierline.cluster.spec import ClusterSpec, TierSpec, deployment_name
from tierline.cluster.specfile import parse_spec
from tierline.deployments.engine.adapters import adapter_sources
from tierline.deployments.engine.deployment import build_tier_app, request_path_env
from tierline.deployments.engine.relay_registry import GcsKV, cluster_token, fetch_relays
from tierline.deployments.gateway import GatewayCore, create_app
from tierline.deployments.gateway.embeddings import HandleEmbedder
from tierline.deployments.gateway.engines.engine_client import (
    EngineClient,
    ServeEngineClient,
    import_request_models,
)
from tierline.deployments.gateway.engines.external import external_client, external_counter
from tierline.deployments.gateway.engines.relay import RelayDirectory, RelayEngineClient
from tierline.deployments.gateway.engines.replicas import ServeDetails, ServeReplicaWatcher
from tierline.deployments.gateway.observe.metrics import GatewayMetrics, RayRecorder, RouterMetrics
from tierline.deployments.gateway.pipeline.auth import load_key_store
from tierline.deployments.gateway.pipeline.plan import spec_capabilities
from tierline.deployments.gateway.pipeline.routing import LearnedRouter
from tierline.deployments.gateway.pipeline.tokens import load_counter
from tierline.deployments.gateway.quota.service import QuotaService, ServeQuota, is_limited
from tierline.deployments.gateway.responses.store import open_store, with_absolute_store
from tierline.deployments.logs import serve_logging_kept
from tierline.deployments.rag.deployment import ServeRagClient, build_embeddings_app, build_rag_apps
from tierline.router.capabilities import read_model_config

QUOTA_DEPLOYMENT = "quota"
logger = logging.getLogger("ray.serve.tierline.gateway")


@serve.ingress()
class Gateway:
    """Thin Serve wrapper: real engine handles and tokenizers into `GatewayCore`."""

    def __init__(
        self,
        spec_data: dict[str, Any],
        engines: dict[str, DeploymentHandle],
        quota: DeploymentHandle | None = None,
        rag: dict[str, DeploymentHandle] | None = None,
        embeddings: DeploymentHandle | None = None,
    ) -> None:
        self._spec = parse_spec(spec_data, "gateway args")
        self._engines = engines
        self._quota = quota
        self._rag = rag
        self._embeddings = embeddings
        self._core: GatewayCore | None = None
        self._gauges: asyncio.Task[None] | None = None  # keeps metric gauges fresh
        self._relays: asyncio.Task[None] | None = None  # keeps the relay directory current

    async def __serve_build_asgi_app__(self) -> Any:
        check_direct_ingress()
        # Replica start-up: tokenizers are loaded here, not at import or construction.
        with serve_logging_kept():  # vLLM's import would close the replica's log file
            import_request_models()
        counters = {
            t.name: load_counter(t.model_source, t.chat_template)
            if t.model_source
            else external_counter(t)
            for t in self._spec.tiers
        }
        # External tiers: an HTTP client (its API key read now); engine tiers: the relay
        # to the replicas' own vLLM apps, over Serve handles until a replica has published
        # its relay (a tier at zero replicas has none: the handle path wakes it).
        directory = RelayDirectory()
        relayed = {t.name for t in relayed_tiers(self._spec)}
        # One poll of Serve's controller for the relay directory and the replica watcher.
        details = ServeDetails()
        clients: dict[str, EngineClient] = {}
        for t in self._spec.tiers:
            if t.is_external:
                clients[t.name] = external_client(t)
                continue
            handle_path = ServeEngineClient(
                self._engines[t.name],
                t.model_name,
                adapter_sources(t),
                queue_wait_s=self._spec.gateway.failover_timeout_s,
            )
            clients[t.name] = (
                RelayEngineClient(
                    t.name,
                    handle_path,
                    directory,
                    adapter_sources(t),
                    prefix_affinity=t.replica_routing == "prefix",
                    imbalance=t.prefix_imbalanced_threshold,
                    stream_interval_ms=self._spec.gateway.stream_interval_ms,
                )
                if t.name in relayed
                else handle_path
            )
        if relayed:
            app_name = serve.get_replica_context().app_name
            deployments = {
                t.name: deployment_name(t) for t in self._spec.tiers if t.name in relayed
            }
            self._relays = asyncio.get_running_loop().create_task(
                watch_relays(directory, app_name, deployments, details)
            )
        auth = self._spec.gateway.auth
        keys = load_key_store(auth) if auth.enabled else None
        if keys is not None and len(keys) == 0:
            logger.warning(
                "authentication is on but no API key is configured: "
                "every request except /healthz and /readyz will get 401"
            )
        quota = ServeQuota(self._quota) if self._quota is not None else None
        # The learned router's MiniLM model loads here too (a second or two, off the loop).
        # Metrics go through Ray's per-node metrics agent (see deployments.gateway.observe.metrics).
        replica = serve.get_replica_context().replica_id.unique_id
        recorder = RayRecorder()
        self._gauges = asyncio.get_running_loop().create_task(recorder.keep_gauges())
        router_metrics = RouterMetrics(recorder, replica)
        learned = (
            await asyncio.to_thread(LearnedRouter.start, self._spec, 1, router_metrics)
            if self._spec.router.policy == "learned"
            else None
        )
        # Autoscaled tiers: the gateway follows their replica counts (scale to zero).
        # Engine tiers' replica counts from Serve: autoscaled tiers follow them (scale to
        # zero), and a tier whose replicas all died is marked down at once.
        watched = {t.name: deployment_name(t) for t in self._spec.engine_tiers}
        replicas = (
            ServeReplicaWatcher(serve.get_replica_context().app_name, watched, details)
            if watched
            else None
        )
        # What each tier can serve: the spec, and the models' config.json where local.
        configs = await asyncio.to_thread(
            lambda: {t.name: read_model_config(t.model_source) for t in self._spec.engine_tiers}
        )
        self._core = GatewayCore(
            self._spec,
            clients,
            counters,
            quota=quota,
            learned=learned,
            replicas=replicas,
            metrics=GatewayMetrics(self._spec, recorder, replica),
            capabilities=spec_capabilities(self._spec, configs),
        )
        rag = (
            ServeRagClient(
                self._rag["rag"], self._rag["embeddings"], self._spec.rag.embedding_model
            )
            if self._rag is not None
            else None
        )
        # /v1/embeddings: the RAG client's embeddings handle, or the deployment alone.
        embedder = HandleEmbedder(self._embeddings) if self._embeddings is not None else None
        # Stored responses: the spec's store (SQLite file or server), opened in lifespan.
        store = open_store(self._spec.gateway.responses)
        return create_app(self._core, keys, rag, embedder, store)

    async def drain(self, timeout_s: float | None = None) -> tuple[str, int]:
        """Stop taking requests and wait for in-flight ones. Returns this replica's id and
        how many requests were still running when the wait ended."""
        replica = serve.get_replica_context().replica_id.unique_id
        if self._core is None:
            return replica, 0
        window = self._spec.gateway.drain_timeout_s if timeout_s is None else timeout_s
        return replica, await self._core.drain(window)


def relayed_tiers(spec: ClusterSpec) -> list[TierSpec]:
    """The engine tiers whose requests take the relay (`gateway.engine_path`): all of
    them. Autoscaled tiers count relayed requests through `deployments.engine.autoscale`, and a
    tier at zero replicas has no relay: its requests take the handle path, which wakes it."""
    if spec.gateway.engine_path != "relay":
        return []
    return list(spec.engine_tiers)


async def watch_relays(
    directory: RelayDirectory,
    app: str,
    deployments: dict[str, str],
    details: ServeDetails,
    period_s: float = 1.0,
) -> None:
    """Keep `directory` current: the cluster's relay token, and each relayed tier's live
    relays (published by its replicas, filtered by Serve's replica list, read through
    `details`: the poll of the controller the replica watcher shares)."""
    kv = GcsKV()
    while True:
        try:
            if directory.token is None:
                directory.token = await asyncio.to_thread(cluster_token, kv)
            serve_details = await details.get(fresh=True)
            relays = await asyncio.to_thread(fetch_relays, kv, serve_details, app, deployments)
            for tier, urls in relays.items():
                directory.set(tier, urls)
        except Exception as err:  # the controller or GCS busy: keep what is known
            logger.warning("relay directory refresh failed: %r", err)
        await asyncio.sleep(period_s)


def direct_ingress_on() -> bool:
    """Whether this Ray process serves ingress replicas directly (Ray's effective setting:
    RAY_SERVE_THROUGHPUT_OPTIMIZED and HAProxy mode turn it on too)."""
    from ray.serve._private import constants

    return bool(constants.RAY_SERVE_ENABLE_DIRECT_INGRESS)


def check_direct_ingress() -> None:
    """Refuse to start on a Ray cluster without the request path's process settings: the
    gateway would sit behind Serve's proxy on another port, slower and not where traffic
    is sent. Said once, clearly, instead of serving the slow path unnoticed."""
    if direct_ingress_on():
        return
    missing = {k: v for k, v in REQUEST_PATH_PROCESS_ENV.items() if os.environ.get(k) != v}
    raise RuntimeError(
        "tierline's gateway needs Ray Serve direct ingress: start every Ray node with "
        + " ".join(f"{k}={v}" for k, v in missing.items())
        + " and the HTTP port range that `tierline render serve` prints (the Helm chart "
        "sets them on every pod; `tierline up` sets them itself)"
    )


def gateway_options(spec: ClusterSpec) -> dict[str, Any]:
    return {
        "name": GATEWAY_DEPLOYMENT,
        "num_replicas": spec.gateway.replicas,
        "max_ongoing_requests": 1024,
        "ray_actor_options": {
            "num_cpus": 0.5,
            "runtime_env": {"env_vars": request_path_env()},  # see deployments.engine.deployment
        },
        "graceful_shutdown_timeout_s": spec.gateway.drain_timeout_s,
    }


def build_graph(spec: ClusterSpec) -> Application:
    spec = with_absolute_store(spec, Path.cwd())
    drain = spec.gateway.drain_timeout_s
    engines = {t.name: build_tier_app(t, drain) for t in spec.engine_tiers}
    quota = None
    g = spec.gateway
    if any(is_limited(q) for q in [g.default_quota, *g.tenants]):
        quota = serve.deployment(
            name=QUOTA_DEPLOYMENT,
            num_replicas=1,
            max_ongoing_requests=100_000,
            ray_actor_options={"num_cpus": 0},
        )(QuotaService).bind(g.model_dump(mode="json"))
    rag = None
    embeddings = None  # with RAG on, /v1/embeddings uses RAG's embeddings deployment
    if spec.rag.enabled:
        rag_app, embeddings_app = build_rag_apps(spec)
        rag = {"rag": rag_app, "embeddings": embeddings_app}
    elif spec.serves_embeddings:
        embeddings = build_embeddings_app(spec)
    gateway = serve.deployment(**gateway_options(spec))(Gateway)
    return gateway.bind(spec.model_dump(mode="json"), engines, quota, rag, embeddings)


def build_app(args: dict[str, Any]) -> Application:
    """Application builder for `serve run`/`serve deploy`: args are `{"spec": <spec>}`."""
    if "spec" not in args:
        raise ValueError("tierline's application args need a 'spec' key holding the spec")
    return build_graph(parse_spec(args["spec"], "application args.spec"))
