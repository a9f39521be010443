"""A tier: an in-cluster vLLM engine deployment or an external endpoint."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator
from tierline.cluster.spec.base import (
    NAME_PATTERN,
    PositiveInt,
    Price,
    Strict,
)


class Autoscaling(Strict):
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


REMOTE_URI_PREFIXES = ("s3://", "gs://", "abfss://", "azure://")
LOCAL_PATH_PREFIXES = ("./", "../", "/", "~")


class AdapterSpec(Strict):
    """A LoRA adapter served over its tier's base model (Ray Serve LLM multiplexing)."""

    name: str = Field(pattern=NAME_PATTERN, description="Adapter name; clients ask for tier:name.")
    source: str = Field(
        min_length=1,
        description="Adapter directory (adapter_config.json + weights): a local path written "
        "./x, ../x, /x or ~/x (relative paths resolve against the spec file's folder), or an "
        "object-store URI (s3://, gs://, abfss://, azure://).",
    )
    served_model_name: str | None = Field(
        None, min_length=1, description="One more model name clients may use for the adapter."
    )

    @model_validator(mode="after")
    def _source(self) -> AdapterSpec:
        if not self.source.startswith(LOCAL_PATH_PREFIXES + REMOTE_URI_PREFIXES):
            raise ValueError(
                f"adapter {self.name!r}: source {self.source!r} is neither a local path "
                "(./x, ../x, /x, ~/x) nor an object-store URI (s3://, gs://, abfss://, azure://)"
            )
        return self


class ExternalSpec(Strict):
    """An OpenAI-compatible endpoint outside the cluster that serves a tier."""

    base_url: str = Field(
        pattern=r"^https?://[^\s]+$",
        description="API root including the version, e.g. https://api.openai.com/v1.",
    )
    model: str = Field(min_length=1, description="The provider's model name.")
    api_key_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Environment variable with the key."
    )
    api_key_file: str | None = Field(
        None,
        min_length=1,
        description="File holding the key (mount a Secret here on Kubernetes); relative "
        "paths resolve against the spec file.",
    )
    connect_timeout_s: float = Field(5.0, gt=0, description="Longest wait for a connection.")
    timeout_s: float = Field(
        60.0,
        gt=0,
        description="Longest wait for the provider's next bytes: the first token when "
        "streaming, the whole answer otherwise.",
    )
    max_concurrency: PositiveInt = Field(
        16, description="Requests in flight to the provider per gateway replica; more get 503."
    )
    health_check: Literal["models", "none"] = Field(
        "models",
        description="models: the gateway's health checks GET base_url/models and look for "
        "the model; none: healthy until requests fail.",
    )
    tokenizer: str | None = Field(
        None,
        description="Local tokenizer directory for exact prompt counts; unset: estimated.",
    )
    forward_fields: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]] = Field(
        default_factory=list,
        description="Request fields sent to the provider besides tierline's allow-list "
        "(docs/tiers.md); any other field a client sends (store, service_tier, "
        "metadata, user, ...) is dropped, since the request runs on the operator's key.",
    )

    @model_validator(mode="after")
    def _one_key(self) -> ExternalSpec:
        if self.api_key_env is not None and self.api_key_file is not None:
            raise ValueError("set either api_key_env or api_key_file, not both")
        return self


# Fields that describe an in-cluster engine; an external tier may not set them.
ENGINE_FIELDS = (
    "model_source",
    "engine_kwargs",
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "replicas",
    "autoscaling",
    "accelerator_type",
    "cpus_per_replica",
    "env_vars",
    "adapters",
    "max_adapters_per_replica",
    "max_lora_rank",
    "tool_call_parser",
    "reasoning_parser",
    "chat_template",
)


class CapabilitiesSpec(Strict):
    """What a tier can serve, where the operator says so; unset fields are inferred
    (router.capabilities): tools from tool_call_parser (external tiers: yes), vision from
    the model config (a vision_config in a local checkpoint's config.json; external: no),
    structured output: yes."""

    tools: bool | None = Field(
        None, description="Tool calling (tools with tool_choice other than none)."
    )
    vision: bool | None = Field(None, description="Image input (image_url content parts).")
    structured_output: bool | None = Field(
        None, description="response_format json_object / json_schema."
    )


class TierSpec(Strict):
    """One model tier: a vLLM engine deployment with its size, limits and prices, or an
    external OpenAI-compatible endpoint (`external`)."""

    name: str = Field(pattern=NAME_PATTERN, description="Tier name, used in headers and URLs.")
    model_source: str | None = Field(
        None,
        min_length=1,
        description="Hugging Face model id or a local checkpoint directory (engine tiers).",
    )
    external: ExternalSpec | None = Field(
        None, description="Serve this tier from an OpenAI-compatible endpoint outside."
    )
    adapters: list[AdapterSpec] = Field(
        default_factory=list, description="LoRA adapters served over this tier's model."
    )
    max_adapters_per_replica: PositiveInt = Field(
        4, description="Adapters one engine replica keeps loaded; least recently used go first."
    )
    max_lora_rank: Literal[8, 16, 32, 64, 128, 256, 512] = Field(
        16, description="Largest adapter rank the engine accepts (vLLM max_lora_rank)."
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
    max_queued_requests: int = Field(
        64,
        ge=-1,
        description="Requests waiting for a replica before new ones get 503 (-1: no limit).",
    )
    fallback_tier: str | None = Field(
        None, description="Tier that takes a request when this one fails before any output."
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
    dtype: Literal["float32", "bfloat16", "float16", "fp8", "int8", "int4"] | None = Field(
        None,
        description="Weight precision: sizes the tier's GPU memory and, for float types, is "
        "vLLM's dtype; unset: the model config's.",
    )
    gpu_hour_price_usd: float | None = Field(
        None, ge=0, description="US dollars per GPU-hour; prices tokens when they have no price."
    )
    measured_input_tokens_per_s: float | None = Field(
        None, gt=0, description="Measured prompt tokens per second of one replica."
    )
    measured_output_tokens_per_s: float | None = Field(
        None, gt=0, description="Measured generated tokens per second of one replica."
    )
    replica_routing: Literal["pow2", "prefix"] = Field(
        "pow2",
        description="How Serve picks a replica inside the tier: power of two choices, or "
        "prefix-cache affinity (requests sharing a prompt prefix go to the replica that "
        "served it while queues stay balanced).",
    )
    prefix_imbalanced_threshold: PositiveInt = Field(
        4,
        description="replica_routing prefix: above this queue-length gap between replicas "
        "the router falls back to power of two choices.",
    )
    tool_call_parser: str | None = Field(
        None,
        min_length=1,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="vLLM tool call parser (hermes, llama3_json, mistral, ...): turns on "
        "tool_choice auto (vLLM enable_auto_tool_choice) and marks the tier tool-capable.",
    )
    reasoning_parser: str | None = Field(
        None,
        min_length=1,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="vLLM reasoning parser (deepseek_r1, qwen3, ...): reasoning goes to "
        "the answer's reasoning field.",
    )
    chat_template: str | None = Field(
        None,
        min_length=1,
        description="Jinja chat template file for vLLM (./x, ../x, /x or ~/x; relative "
        "paths resolve against the spec file); unset: the model's own.",
    )
    capabilities: CapabilitiesSpec = Field(
        default_factory=CapabilitiesSpec,
        description="What the tier can serve; unset fields are inferred. Auto routing "
        "sends a request only to tiers that can serve it.",
    )

    @property
    def scales_to_zero(self) -> bool:
        return self.autoscaling is not None and self.autoscaling.min_replicas == 0

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

    @property
    def is_external(self) -> bool:
        return self.external is not None

    def adapter_model_id(self, adapter: AdapterSpec) -> str:
        """The adapter's id on the engine (Ray Serve LLM's `base:adapter` multiplexed id)."""
        return f"{self.model_name}:{adapter.name}"

    def adapter_names(self, adapter: AdapterSpec) -> list[str]:
        """Every model name that selects `adapter`: tier:name, served:name, its own name."""
        names = [f"{self.name}:{adapter.name}", self.adapter_model_id(adapter)]
        if adapter.served_model_name is not None:
            names.append(adapter.served_model_name)
        return list(dict.fromkeys(names))

    def _external_ok(self) -> None:
        fields = type(self).model_fields
        mixed = [
            f
            for f in ENGINE_FIELDS
            if getattr(self, f) != fields[f].get_default(call_default_factory=True)
        ]
        if mixed:
            raise ValueError(
                f"an external tier runs no engine: remove {', '.join(mixed)} "
                "(the provider's model is external.model)"
            )

    @model_validator(mode="after")
    def _consistent(self) -> TierSpec:
        if self.external is not None:
            self._external_ok()
            return self
        if self.model_source is None:
            raise ValueError("set model_source (an engine tier) or external (an outside endpoint)")
        if self.chat_template is not None and not self.chat_template.startswith(
            LOCAL_PATH_PREFIXES
        ):
            raise ValueError(
                f"chat_template {self.chat_template!r} is not a file path (./x, ../x, /x, ~/x)"
            )
        names = [a.name for a in self.adapters]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"adapter names must be unique in a tier: {', '.join(dupes)}")
        if self.replicas is not None and self.autoscaling is not None:
            raise ValueError("set either replicas or autoscaling, not both")
        reserved = {
            "model",
            "served_model_name",
            "max_model_len",
            "tensor_parallel_size",
            "pipeline_parallel_size",
            "tool_call_parser",
            "enable_auto_tool_choice",
            "reasoning_parser",
            "chat_template",
        }
        clash = sorted(reserved & set(self.engine_kwargs))
        if clash:
            raise ValueError(
                f"engine_kwargs may not set {', '.join(clash)}: use the tier's own fields "
                "(model_source, served_model_name, max_context_tokens, "
                "tensor_parallel_size, pipeline_parallel_size, tool_call_parser, "
                "reasoning_parser, chat_template)"
            )
        if self.tensor_parallel_size * self.pipeline_parallel_size > 1 and not self.uses_gpu:
            raise ValueError("tensor/pipeline parallelism above 1 needs an accelerator_type")
        return self
