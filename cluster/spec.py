"""The cluster spec: the one source of truth for local runs, `serve deploy` and Helm.

A spec is YAML validated by these pydantic models. Every model forbids unknown keys, so a
typo is an error with its YAML path rather than a silently ignored setting.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?$"
AUTO_MODEL = "auto"

PositiveInt = Annotated[int, Field(ge=1)]
Price = Annotated[float, Field(ge=0.0, description="US dollars per 1M tokens")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Autoscaling(_Strict):
    """Per-tier replica autoscaling, passed to Ray Serve's autoscaler."""

    min_replicas: int = Field(1, ge=0, description="Lower bound; 0 allows scale to zero.")
    max_replicas: PositiveInt = Field(2, description="Upper bound on engine replicas.")
    target_ongoing_requests: float = Field(
        8.0, gt=0, description="Ongoing requests per replica the autoscaler aims for."
    )
    upscale_delay_s: float = Field(30.0, ge=0, description="Sustained load before adding.")
    downscale_delay_s: float = Field(300.0, ge=0, description="Sustained idle before removing.")

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})"
            )
        return self


class TierSpec(_Strict):
    """One model tier: a vLLM engine deployment with its size, limits and prices."""

    name: str = Field(pattern=NAME_PATTERN, description="Tier name, used in headers and URLs.")
    model_source: str = Field(
        min_length=1, description="Hugging Face model id or a local checkpoint directory."
    )
    served_model_name: str | None = Field(
        None, min_length=1, description="Model name clients may use; defaults to the tier name."
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Passed through to vLLM's engine arguments."
    )
    tensor_parallel_size: PositiveInt = Field(1, description="GPUs per pipeline stage.")
    pipeline_parallel_size: PositiveInt = Field(1, description="Pipeline stages (nodes).")
    replicas: PositiveInt | None = Field(
        None, description="Fixed replica count; leave unset when autoscaling is given."
    )
    autoscaling: Autoscaling | None = None
    accelerator_type: str | None = Field(
        None, description="Ray accelerator type (e.g. H100, A100-80G); unset runs on CPU."
    )
    max_context_tokens: int = Field(
        ge=16, description="Longest prompt plus completion the tier accepts (vLLM max_model_len)."
    )
    max_ongoing_requests: PositiveInt = Field(
        64, description="Requests one engine replica takes at once before Serve queues them."
    )
    cpus_per_replica: float = Field(
        1.0, gt=0, description="Logical CPUs the engine worker reserves (CPU tiers only)."
    )
    env_vars: dict[str, str] = Field(
        default_factory=dict, description="Environment of the engine replicas."
    )
    price_per_1m_input_tokens: Price = 0.0
    price_per_1m_output_tokens: Price = 0.0
    params_b: float | None = Field(None, gt=0, description="Parameters, in billions.")
    dtype: Literal["float32", "bfloat16", "float16", "fp8", "int8", "int4"] | None = None

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.name

    @property
    def num_replicas(self) -> int:
        if self.replicas is not None:
            return self.replicas
        return 1 if self.autoscaling is None else max(self.autoscaling.min_replicas, 1)

    @property
    def uses_gpu(self) -> bool:
        return self.accelerator_type is not None

    @model_validator(mode="after")
    def _consistent(self) -> TierSpec:
        if self.replicas is not None and self.autoscaling is not None:
            raise ValueError("set either replicas or autoscaling, not both")
        reserved = {
            "model",
            "served_model_name",
            "max_model_len",
            "tensor_parallel_size",
            "pipeline_parallel_size",
        }
        clash = sorted(reserved & set(self.engine_kwargs))
        if clash:
            raise ValueError(
                f"engine_kwargs may not set {', '.join(clash)}: use the tier's own fields "
                "(model_source, served_model_name, max_context_tokens, "
                "tensor_parallel_size, pipeline_parallel_size)"
            )
        if self.tensor_parallel_size * self.pipeline_parallel_size > 1 and not self.uses_gpu:
            raise ValueError("tensor/pipeline parallelism above 1 needs an accelerator_type")
        return self


class RulesParams(_Strict):
    """Parameters of the rules policy: a length and keyword heuristic."""

    long_prompt_tokens: PositiveInt = Field(
        1024, description="Prompts at least this long go to the next tier up."
    )
    hard_keywords: list[str] = Field(
        default_factory=lambda: [
            "prove",
            "derive",
            "step by step",
            "analyze",
            "analyse",
            "explain why",
            "optimize",
            "debug",
            "theorem",
        ],
        description="Case-insensitive phrases that mark a prompt as hard.",
    )
    hard_tier: str | None = Field(
        None, description="Tier for hard prompts; defaults to the most capable tier."
    )


class RouterSpec(_Strict):
    policy: Literal["rules"] = Field("rules", description="Routing policy for model=auto.")
    default_tier: str | None = Field(
        None, description="Tier for prompts no rule picks; defaults to the cheapest tier."
    )
    params: RulesParams = Field(default_factory=RulesParams)


class GatewaySpec(_Strict):
    host: str = Field("127.0.0.1", description="Address the HTTP proxy binds.")
    port: int = Field(8000, ge=1, le=65535)
    replicas: PositiveInt = 1
    max_body_bytes: PositiveInt = Field(1 << 20, description="Larger request bodies get 413.")
    max_tokens_limit: PositiveInt = Field(4096, description="Upper bound on max_tokens.")
    max_n: int = Field(16, ge=1, le=128, description="Upper bound on n (choices per request).")
    max_messages: PositiveInt = Field(512, description="Upper bound on messages per request.")
    request_timeout_s: float = Field(600.0, gt=0, description="End-to-end request timeout.")


class RagSpec(_Strict):
    """Placeholder for the retrieval-augmented generation deployment."""

    enabled: bool = False


class ClusterSpec(_Strict):
    name: str = Field("tierline", pattern=NAME_PATTERN)
    tiers: list[TierSpec] = Field(
        min_length=1, description="Ordered from cheapest to most capable."
    )
    router: RouterSpec = Field(default_factory=RouterSpec)
    gateway: GatewaySpec = Field(default_factory=GatewaySpec)
    rag: RagSpec = Field(default_factory=RagSpec)

    @model_validator(mode="after")
    def _cross_fields(self) -> ClusterSpec:
        seen: dict[str, str] = {}
        for tier in self.tiers:
            for key in dict.fromkeys((tier.name, tier.model_name)):
                if key == AUTO_MODEL:
                    raise ValueError(f"tier {tier.name!r}: the name 'auto' is reserved")
                if key in seen:
                    raise ValueError(
                        f"tier {tier.name!r}: name {key!r} is already used by tier {seen[key]!r}"
                    )
                seen[key] = tier.name
        names = [t.name for t in self.tiers]
        for field, value in (
            ("router.default_tier", self.router.default_tier),
            ("router.params.hard_tier", self.router.params.hard_tier),
        ):
            if value is not None and value not in names:
                raise ValueError(f"{field} {value!r} is not a tier (tiers: {', '.join(names)})")
        return self

    def tier(self, name: str) -> TierSpec:
        for t in self.tiers:
            if t.name == name:
                return t
        raise KeyError(name)

    def resolve_model(self, model: str) -> TierSpec | None:
        """The tier a request's `model` field pins, by tier name or served model name."""
        for t in self.tiers:
            if model in (t.name, t.model_name):
                return t
        return None


def deployment_name(tier: TierSpec) -> str:
    """Serve deployment name prefix of a tier's engine."""
    return "tier-" + re.sub(r"[^a-z0-9-]", "-", tier.name)
