"""The cluster spec: the one source of truth for local runs, `serve deploy` and Helm.

A spec is YAML validated by these pydantic models. Every model forbids unknown keys, so a
typo is an error with its YAML path rather than a silently ignored setting.
"""

from __future__ import annotations

import re

from pydantic import Field, model_validator
from tierline.cluster.spec.base import AUTO_MODEL, NAME_PATTERN, PositiveInt, Price, Strict
from tierline.cluster.spec.gateway import (
    REMOVED_GATEWAY_FIELDS,
    AuthSpec,
    GatewaySpec,
    LoopShareSpec,
    QuotaSpec,
    RequestLimitsSpec,
    ResponsesSpec,
    TenantSpec,
)
from tierline.cluster.spec.rag import (
    MILVUS_SERVER_SCHEMES,
    EmbeddingsSpec,
    RagSpec,
)
from tierline.cluster.spec.routing import (
    CascadeSpec,
    LearnedParams,
    LoadDowngradeSpec,
    RouterSpec,
    RulesParams,
)
from tierline.cluster.spec.tiers import (
    ENGINE_FIELDS,
    LOCAL_PATH_PREFIXES,
    REMOTE_URI_PREFIXES,
    AdapterSpec,
    Autoscaling,
    CapabilitiesSpec,
    ExternalSpec,
    TierSpec,
)


class ClusterSpec(Strict):
    name: str = Field(
        "tierline", pattern=NAME_PATTERN, description="Cluster name: the Serve application's."
    )
    tiers: list[TierSpec] = Field(
        min_length=1, description="Ordered from cheapest to most capable."
    )
    router: RouterSpec = Field(
        default_factory=RouterSpec, description="How `auto` requests pick a tier."
    )
    gateway: GatewaySpec = Field(
        default_factory=GatewaySpec,
        description="The OpenAI-compatible ingress: keys, quotas, limits, failover.",
    )
    rag: RagSpec = Field(
        default_factory=RagSpec, description="Retrieval: the document store, chunking, search."
    )
    embeddings: EmbeddingsSpec = Field(
        default_factory=EmbeddingsSpec,
        description="The OpenAI embeddings endpoint, with or without RAG.",
    )
    model_aliases: dict[str, str] = Field(
        default_factory=dict,
        description="More names for a request's `model`: each maps a name apps already send "
        "(the OpenAI SDK's examples name `gpt-5.5`) to `auto`, a tier name, a served model "
        "name or an adapter name, and the request is served as if it named that. An alias "
        "may not be a name the spec already uses. /v1/embeddings takes any `model` anyway.",
    )

    @model_validator(mode="after")
    def _cross_fields(self) -> ClusterSpec:
        seen: dict[str, str] = {}
        for tier in self.tiers:
            # Model names per owner (the tier, each adapter); owners may not share one.
            owned = [(f"tier {tier.name!r}", dict.fromkeys((tier.name, tier.model_name)))]
            owned += [
                (f"tier {tier.name!r} adapter {a.name!r}", dict.fromkeys(tier.adapter_names(a)))
                for a in tier.adapters
            ]
            for owner, keys in owned:
                for key in keys:
                    if key == AUTO_MODEL:
                        raise ValueError(f"{owner}: the name 'auto' is reserved")
                    if key in seen:
                        raise ValueError(f"{owner}: name {key!r} is already used by {seen[key]}")
                    seen[key] = owner
        for alias, target in self.model_aliases.items():
            if not alias.strip():
                raise ValueError("model_aliases: an alias may not be empty")
            if alias == AUTO_MODEL or alias in seen:
                owner = seen.get(alias, "the router")
                raise ValueError(f"model_aliases: {alias!r} is already a name of {owner}")
            if target != AUTO_MODEL and target not in seen:
                known = ", ".join([AUTO_MODEL, *seen])
                raise ValueError(
                    f"model_aliases: {alias!r} -> {target!r}, which is not a model name "
                    f"here (names: {known})"
                )
        names = [t.name for t in self.tiers]
        refs = [
            ("router.default_tier", self.router.default_tier),
            ("router.params.hard_tier", self.router.params.hard_tier),
        ]
        refs += [("router.learned.tier_outputs", n) for n in self.router.learned.tier_outputs]
        refs += [(f"tiers[{i}].fallback_tier", t.fallback_tier) for i, t in enumerate(self.tiers)]
        for i, tenant in enumerate(self.gateway.tenants):
            refs += [(f"gateway.tenants[{i}].tiers", name) for name in tenant.tiers or []]
        refs += [("gateway.default_quota.tiers", n) for n in self.gateway.default_quota.tiers or []]
        for t in self.tiers:
            if t.fallback_tier == t.name:
                raise ValueError(f"tier {t.name!r} cannot be its own fallback_tier")
        if len(self.tiers) > 1 and self.tiers[-1].scales_to_zero:
            raise ValueError(
                f"tier {self.tiers[-1].name!r}: only cheaper tiers may scale to zero "
                "(autoscaling.min_replicas 0); the most capable tier takes the auto traffic "
                "that skips them and keeps at least one replica"
            )
        tenants = [t.name for t in self.gateway.tenants]
        if len(set(tenants)) != len(tenants):
            raise ValueError("gateway.tenants: tenant names must be unique")
        for field, value in refs:
            if value is not None and value not in names:
                raise ValueError(f"{field} {value!r} is not a tier (tiers: {', '.join(names)})")
        return self

    def tier(self, name: str) -> TierSpec:
        for t in self.tiers:
            if t.name == name:
                return t
        raise KeyError(name)

    def canonical_model(self, model: str) -> str:
        """The name a request's `model` stands for: its alias target, or itself."""
        return self.model_aliases.get(model, model)

    def resolve_model(self, model: str) -> TierSpec | None:
        """The tier a request's `model` field pins, by tier name or served model name, or
        by one of its adapters' names."""
        for t in self.tiers:
            if model in (t.name, t.model_name):
                return t
        found = self.resolve_adapter(model)
        return found[0] if found is not None else None

    def resolve_adapter(self, model: str) -> tuple[TierSpec, AdapterSpec] | None:
        """The tier and adapter a request's `model` names (tier:adapter, served:adapter, or
        the adapter's served_model_name), or None when it names no adapter."""
        for t in self.tiers:
            for a in t.adapters:
                if model in t.adapter_names(a):
                    return t, a
        return None

    @property
    def serves_embeddings(self) -> bool:
        """Whether the embeddings deployment runs and /v1/embeddings is served."""
        return self.embeddings.enabled or self.rag.enabled

    @property
    def embedding_model_name(self) -> str:
        return self.embeddings.served_model_name or self.rag.embedding_model

    @property
    def engine_tiers(self) -> list[TierSpec]:
        """Tiers that run an engine deployment in the cluster (not external ones)."""
        return [t for t in self.tiers if not t.is_external]


def deployment_name(tier: TierSpec) -> str:
    """Serve deployment name prefix of a tier's engine."""
    return "tier-" + re.sub(r"[^a-z0-9-]", "-", tier.name)


__all__ = [
    "AUTO_MODEL",
    "ENGINE_FIELDS",
    "LOCAL_PATH_PREFIXES",
    "MILVUS_SERVER_SCHEMES",
    "NAME_PATTERN",
    "REMOTE_URI_PREFIXES",
    "REMOVED_GATEWAY_FIELDS",
    "AdapterSpec",
    "AuthSpec",
    "Autoscaling",
    "CapabilitiesSpec",
    "CascadeSpec",
    "ClusterSpec",
    "EmbeddingsSpec",
    "ExternalSpec",
    "GatewaySpec",
    "LearnedParams",
    "LoadDowngradeSpec",
    "LoopShareSpec",
    "PositiveInt",
    "Price",
    "QuotaSpec",
    "RagSpec",
    "RequestLimitsSpec",
    "ResponsesSpec",
    "RouterSpec",
    "RulesParams",
    "Strict",
    "TenantSpec",
    "TierSpec",
    "deployment_name",
]
