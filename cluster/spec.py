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


REMOTE_URI_PREFIXES = ("s3://", "gs://", "abfss://", "azure://")
LOCAL_PATH_PREFIXES = ("./", "../", "/", "~")


class AdapterSpec(_Strict):
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


class ExternalSpec(_Strict):
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


class CapabilitiesSpec(_Strict):
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


class TierSpec(_Strict):
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


Preference = Literal["cost", "balanced", "quality", "latency"]


class LearnedParams(_Strict):
    """Parameters of the learned policy: (static) MiniLM embedding + trained head, calibrated."""

    artifact: str | None = Field(
        None, description="Trained scorer (.npz); unset uses the one shipped with tierline."
    )
    strong_share: float | None = Field(
        None, ge=0.0, le=1.0, description="Target share of auto traffic above the cheapest tier."
    )
    quality_target: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Instead of strong_share: fraction of the top tier's quality gain to keep.",
    )
    default_preference: Preference = Field(
        "balanced", description="Used when a request sends no x-tierline-preference header."
    )
    cost_share_factor: float = Field(0.5, ge=0.0, description="cost: share x this factor.")
    quality_share_factor: float = Field(2.0, ge=0.0, description="quality: share x this factor.")
    window_requests: PositiveInt = Field(1000, description="Live scores kept to re-calibrate.")
    min_window_requests: PositiveInt = Field(
        200, description="Live scores needed before they replace the shipped calibration."
    )
    spill_when_overloaded: bool = Field(
        True, description="Send a request one tier up when its tier's queue is over its limit."
    )
    tier_outputs: dict[str, str] = Field(
        default_factory=dict, description="Tier name -> scorer output (weak|strong) it reads."
    )
    profile: str | None = Field(
        None,
        description="A `tierline profile` JSON: its measured time to first token per tier "
        "is the latency preference's prior until live requests have measured it.",
    )

    @model_validator(mode="after")
    def _one_target(self) -> LearnedParams:
        if self.strong_share is not None and self.quality_target is not None:
            raise ValueError("set either strong_share or quality_target, not both")
        return self


class CascadeSpec(_Strict):
    """Non-streaming auto requests: keep a cheap tier's answer unless it looks unsure."""

    enabled: bool = Field(False, description="Escalate unsure answers to the next tier up.")
    logprob_threshold: float = Field(
        -1.5,
        le=0,
        description="Escalate when the answer's mean token log-probability is below this.",
    )
    max_escalations: int = Field(1, ge=1, le=8, description="Escalations per request at most.")


class RouterSpec(_Strict):
    policy: Literal["rules", "learned"] = Field(
        "rules", description="Routing policy for model=auto."
    )
    default_tier: str | None = Field(
        None, description="Tier for prompts no rule picks; defaults to the cheapest tier."
    )
    params: RulesParams = Field(default_factory=RulesParams)
    learned: LearnedParams = Field(default_factory=LearnedParams)
    cold_start: Literal["skip", "wait"] = Field(
        "skip",
        description="auto traffic and tiers scaled to zero: skip them while they have no "
        "replica (go one tier up), or send the request and wait for the cold start.",
    )
    cold_start_timeout_s: float = Field(
        300.0, gt=0, description="How long a request sent to a tier at zero replicas waits."
    )
    cascade: CascadeSpec = Field(default_factory=CascadeSpec)
    max_quality_loss: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="Learned policy: among auto requests kept on a cheaper tier, the most "
        "quality loss allowed (for right/wrong labels: the share the next tier up would have "
        "answered right and the cheaper one wrong), held with probability `confidence` on "
        "prompts like the scorer's calibration set. Instead of learned.strong_share.",
    )
    confidence: float = Field(
        0.9,
        gt=0.0,
        lt=1.0,
        description="Probability with which max_quality_loss holds, per pair of tiers.",
    )

    @model_validator(mode="after")
    def _bound_needs_learned(self) -> RouterSpec:
        if self.max_quality_loss is None:
            return self
        if self.policy != "learned":
            raise ValueError("max_quality_loss needs policy: learned")
        if self.learned.strong_share is not None or self.learned.quality_target is not None:
            raise ValueError(
                "set either max_quality_loss or learned.strong_share/learned.quality_target, "
                "not both"
            )
        return self


class AuthSpec(_Strict):
    """API keys. Each key maps to a tenant; keys are stored only as SHA-256 hashes."""

    enabled: bool = Field(True, description="Require `Authorization: Bearer KEY`.")
    keys_file: str | None = Field(
        None,
        description="JSON file of {tenant, sha256, role} entries (`tierline keys add` writes "
        "it; mount a Secret here on Kubernetes); role `operator` marks an operator key. "
        "Re-read within seconds of a change, no restart. Relative paths resolve against the "
        "spec file.",
    )
    env_var: str = Field(
        "TIERLINE_API_KEY", description="Environment variable holding one more key."
    )
    env_tenant: str = Field("default", description="Tenant of the key in env_var.")


class QuotaSpec(_Strict):
    """Limits for one tenant; unset means unlimited."""

    requests_per_min: PositiveInt | None = Field(None, description="Requests per rolling minute.")
    tokens_per_min: PositiveInt | None = Field(
        None,
        description="Prompt plus completion tokens per rolling minute. A request reserves its "
        "worst case (prompts x n plus the completion budget: max_tokens, or the tier's whole "
        "remaining context when unset) and is charged what the engine reports it used; "
        "embedded tokens (RAG, /v1/embeddings) count too.",
    )
    max_concurrent: PositiveInt | None = Field(None, description="Requests in flight at once.")
    tiers: list[str] | None = Field(None, description="Tiers this tenant may use; unset: all.")


class TenantSpec(QuotaSpec):
    name: str = Field(pattern=NAME_PATTERN, description="Tenant name, as in the keys file.")


class ResponsesSpec(_Strict):
    """The Responses API's store: stored responses (`store: true`, the default) and the
    conversations `previous_response_id` rebuilds, shared by every gateway replica."""

    store_uri: str = Field(
        ".tierline/responses.db",
        min_length=1,
        description="Where stored responses live. A SQLite file path (relative to the working "
        "directory) or `sqlite:///path`: embedded, WAL mode, shared by the gateway replicas of "
        "one host only (SQLite's WAL does not work on a network filesystem). "
        "`postgresql://user@host:5432/db` (or `postgres://`, any libpq URI parameters such as "
        "`?sslmode=require`): a PostgreSQL server shared by gateway replicas on several hosts; "
        "the tables are created on first start. Leave the password out of the URI and set "
        "PGPASSWORD in the gateway's environment instead: libpq reads it (and its other PG* "
        "variables, and ~/.pgpass). The Helm chart defaults to a PostgreSQL server (values "
        "`responses.postgresql`: its URI, and the Secret PGPASSWORD comes from).",
    )
    ttl_s: float = Field(
        30 * 24 * 3600.0,
        gt=0,
        description="How long a stored response can be retrieved or continued; expired ones "
        "answer 404 and are deleted.",
    )
    max_stored_bytes: PositiveInt = Field(
        4 << 20,
        description="Upper bound on one stored response with its conversation (JSON bytes); a "
        "request whose conversation is larger gets 413 unless it sets `store: false`.",
    )
    affinity: bool = Field(
        True,
        description="A follow-up turn (`previous_response_id`, model `auto`) stays on the tier "
        "that served the previous turn while its prompt fits that tier's context and the tier "
        "is healthy and running (x-tierline-route-reason `affinity:kept`; when it moves, the "
        "reason ends `+affinity-left:context`, `unhealthy`, `cold` or `not-allowed`).",
    )

    @model_validator(mode="after")
    def _known_scheme(self) -> ResponsesSpec:
        uri = self.store_uri
        if "://" in uri and not uri.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError(
                f"store_uri {uri!r}: use a file path, sqlite:///path or postgresql://host/db"
            )
        return self


class RequestLimitsSpec(_Strict):
    """Per-request bounds on what a client may ask of an engine, checked before any work
    (400 naming the setting). They bound the shared CPU one request can take: the JSON
    parser, the grammar compiler, the sampler."""

    max_json_depth: int = Field(
        64,
        ge=8,
        le=512,
        description="Deepest nesting of arrays and objects in a JSON request body; deeper "
        "bodies get 400 before they are parsed.",
    )
    max_stop_sequences: PositiveInt = Field(4, description="Strings in `stop` at most.")
    max_stop_chars: PositiveInt = Field(256, description="Characters in one `stop` string.")
    max_logit_bias: PositiveInt = Field(300, description="Entries in `logit_bias` at most.")
    max_bad_words: PositiveInt = Field(
        64, description="Strings in vLLM's `bad_words` at most (each at most max_stop_chars)."
    )
    max_token_ids: PositiveInt = Field(
        1024, description="Ids in `stop_token_ids` or `allowed_token_ids` at most."
    )
    max_top_logprobs: int = Field(
        20, ge=0, description="Upper bound on `top_logprobs` (and completions' `logprobs`)."
    )
    max_tools: PositiveInt = Field(128, description="Function tools in one request at most.")
    max_grammar_bytes: PositiveInt = Field(
        32 << 10,
        description="Largest output constraint, as JSON bytes: `response_format`'s schema, "
        "vLLM's `structured_outputs` and `guided_*` fields, and the tools when `tool_choice` "
        "forces a call (the engine compiles each into a grammar).",
    )
    image_reserve_tokens: PositiveInt = Field(
        1024,
        description="Prompt tokens the quota reserves per image part until the engine reports "
        "the real count (raise it for models whose images take more).",
    )


class GatewaySpec(_Strict):
    host: str = Field("127.0.0.1", description="Address the gateway replicas bind.")
    port: int = Field(
        8000,
        ge=1,
        le=65534,
        description="Port of the OpenAI-compatible endpoint. The gateway replicas serve it "
        "themselves (Ray Serve direct ingress): on a cluster one replica per node, each on "
        "this port; in local runs replica i on port + i. Serve's proxy, which carries no "
        "traffic, takes another port.",
    )
    replicas: PositiveInt = Field(
        1,
        description="Gateway replicas (Serve deployment). On a cluster at most one per Ray "
        "node, so at most the number of nodes.",
    )
    engine_path: Literal["relay", "serve"] = Field(
        "relay",
        description="How generation requests reach an engine tier. relay: the gateway picks "
        "the replica and sends the request to the replica's own vLLM app on a port of its "
        "node, then passes the answer's bytes on (no Ray Serve handle, no per-token Python "
        "objects outside vLLM's API layer). serve: through Ray Serve handles to Ray Serve "
        "LLM's LLMServer (the earlier path). Autoscaled tiers, and a tier whose replicas "
        "have not published a relay yet, always take the serve path (Serve's autoscaler "
        "counts the requests it routes; a tier at zero replicas is started by one).",
    )
    max_body_bytes: PositiveInt = Field(1 << 20, description="Larger request bodies get 413.")
    max_tokens_limit: PositiveInt = Field(4096, description="Upper bound on max_tokens.")
    max_n: int = Field(16, ge=1, le=128, description="Upper bound on n (choices per request).")
    max_prompts: int = Field(
        64,
        ge=1,
        le=4096,
        description="Upper bound on the prompts in one /v1/completions request (a list of "
        "prompts); more get 400.",
    )
    max_messages: PositiveInt = Field(512, description="Upper bound on messages per request.")
    request_timeout_s: float = Field(
        600.0,
        gt=0,
        description="End-to-end request deadline, from arrival: a stream still running then is "
        "cut (an error event, then [DONE]) and its slot and quota ticket are freed.",
    )
    auth: AuthSpec = Field(default_factory=AuthSpec)
    tenants: list[TenantSpec] = Field(default_factory=list, description="Per-tenant quotas.")
    default_quota: QuotaSpec = Field(
        default_factory=QuotaSpec, description="Quota of tenants not listed in `tenants`."
    )
    retries: int = Field(
        2, ge=0, le=10, description="Retries of a request whose engine fails before any output."
    )
    failover_timeout_s: float = Field(
        2.0,
        gt=0,
        description="After a failure before any output, how long a retry on the same tier "
        "waits for its first output before the tier's fallback_tier takes the request; "
        "also how long a call waits for room when the tier's Serve queue is momentarily "
        "full before the tier counts as overloaded.",
    )
    drain_timeout_s: float = Field(
        30.0, ge=0, description="On shutdown or redeploy, how long in-flight requests may finish."
    )
    responses: ResponsesSpec = Field(
        default_factory=ResponsesSpec, description="The Responses API's store and affinity."
    )
    limits: RequestLimitsSpec = Field(
        default_factory=RequestLimitsSpec,
        description="Bounds on engine fields (stop, logit_bias, grammars, tools, images).",
    )

    @model_validator(mode="before")
    @classmethod
    def _removed_path_switches(cls, data: Any) -> Any:
        removed = [k for k in REMOVED_GATEWAY_FIELDS if isinstance(data, dict) and k in data]
        if removed:
            raise ValueError(
                f"{', '.join(removed)}: removed; the gateway always serves HTTP itself (Ray "
                "Serve direct ingress) and calls the engines over gRPC. Delete the field"
            )
        return data


REMOVED_GATEWAY_FIELDS = ("direct_ingress", "grpc_between_deployments")
"""The switches of the old opt-in request path; the fast path is the only one now."""


MILVUS_SERVER_SCHEMES = ("http://", "https://", "tcp://", "grpc://")  # = rag.store.is_remote


class RagSpec(_Strict):
    """Retrieval-augmented generation: an embeddings deployment and a RAG store deployment."""

    enabled: bool = Field(False, description="Deploy the embeddings and RAG deployments.")
    uri: str = Field(
        ".tierline/rag/milvus.db",
        min_length=1,
        description="Milvus Lite data path (relative to the working directory) or a Milvus "
        "server URI (http://host:19530).",
    )
    token: str | None = Field(None, description="Milvus server token (user:password).")
    replicas: PositiveInt = Field(
        1,
        description="Replicas of the RAG (store) deployment. Above 1 only when uri is a Milvus "
        "server: search then runs in Milvus and replicas hold no index. A local Milvus Lite "
        "file has one owner process and an in-process index, so it takes 1.",
    )
    legacy_tenant: str | None = Field(
        None,
        description="Tenant that takes over collections made before RAG had tenants (tierline's "
        "chunk schema, no tenant prefix): at start-up they are renamed into its namespace. "
        "Unset: they are left untouched and not served.",
    )
    embedding_model: str = Field(
        "all-MiniLM-L6-v2",
        min_length=1,
        description="Embedding model: the packaged all-MiniLM-L6-v2, a local directory, or a "
        "model id (run by embedding_engine).",
    )
    embedding_dim: PositiveInt = Field(384, description="Embedding width of embedding_model.")
    embedding_engine: Literal["sentence-transformers", "vllm"] = Field(
        "sentence-transformers",
        description="What runs embedding_model in each embeddings replica: sentence-transformers, "
        "or a vLLM engine with the pooling runner (GPU hosts; any pooling model vLLM serves).",
    )
    embedding_engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="vLLM engine arguments for embedding_engine vllm (max_model_len, dtype, "
        "enforce_eager, gpu_memory_utilization, ...); model and runner are set by tierline.",
    )
    embedding_device: str = Field(
        "cpu", description="torch device of a sentence-transformers embedding model."
    )
    embedding_replicas: PositiveInt = Field(1, description="Replicas of the embedding deployment.")
    embedding_cpus: float = Field(1.0, gt=0, description="Logical CPUs per embedding replica.")
    embedding_gpus: float = Field(0.0, ge=0, description="GPUs per embedding replica.")
    embedding_env_vars: dict[str, str] = Field(
        default_factory=dict,
        description="Environment of the embeddings replicas, e.g. VLLM_CPU_KVCACHE_SPACE for "
        "a vLLM engine on CPU.",
    )
    embedding_max_batch: PositiveInt = Field(64, description="Texts per batched model call.")
    embedding_batch_wait_ms: float = Field(
        5.0, ge=0, description="How long a batch waits for more concurrent requests."
    )
    chunk_tokens: int = Field(200, ge=16, le=512, description="Chunk size in model tokens.")
    chunk_overlap_tokens: int = Field(40, ge=0, description="Tokens shared by adjacent chunks.")
    max_document_bytes: PositiveInt = Field(5 << 20, description="Larger documents get 413.")
    max_upload_bytes: PositiveInt | None = Field(
        None,
        description="Body limit of the document-upload route (instead of gateway.max_body_bytes); "
        "default 2 x max_document_bytes + 64 KiB, room for JSON escaping and multipart framing.",
    )
    max_file_bytes: PositiveInt | None = Field(
        None,
        description="Largest uploaded file (multipart) the gateway parses; default 2 x "
        "max_document_bytes (a PDF is larger than its text). Larger files get 413.",
    )
    parse_timeout_s: float = Field(
        20.0,
        gt=0,
        le=600,
        description="Wall-clock limit on parsing one uploaded HTML or PDF file (in a worker "
        "process); a file that takes longer gets 422.",
    )
    parse_memory_mib: int = Field(
        1024,
        ge=128,
        description="Address-space limit of the worker process that parses one uploaded file; "
        "a file that needs more gets 413.",
    )
    parse_workers: PositiveInt = Field(
        2, description="Uploaded files parsed at once per gateway replica (one process each)."
    )
    max_documents_per_request: PositiveInt = Field(256, description="Documents per ingest call.")
    default_top_k: PositiveInt = Field(4, description="Chunks a grounded chat retrieves.")
    max_top_k: PositiveInt = Field(50, description="Upper bound on top_k.")
    fusion: Literal["confidence", "weighted", "rrf"] = Field(
        "confidence",
        description="How dense and BM25 results are merged: confidence (the two rankings "
        "interleaved, BM25's share of the places read from BM25's own margin on the query: "
        "large when its best document stands far above the next, as for a name or code), "
        "weighted (normalised scores added, BM25's share raised for queries with a rare "
        "term; the default before) or rrf (reciprocal rank fusion). Figures: BENCHMARKS.md, "
        "RAG.",
    )
    bm25_margin: float = Field(
        0.5,
        gt=0,
        le=1,
        description="fusion: confidence. BM25 counts as confident when its best document's "
        "score is at least this fraction above the next document's: (s1 - s2) / s1.",
    )
    bm25_share_confident: float = Field(
        0.8,
        ge=0,
        le=1,
        description="fusion: confidence. BM25's share of the places when it is confident "
        "(0.8: 4 of the first 5); dense has the rest.",
    )
    bm25_share_unsure: float = Field(
        0.4,
        ge=0,
        le=1,
        description="fusion: confidence. BM25's share of the places otherwise (0.4: 2 of 5).",
    )
    bm25_weight: float = Field(0.4, ge=0, le=1, description="BM25's share in weighted fusion.")
    bm25_weight_rare: float = Field(
        0.8,
        ge=0,
        le=1,
        description="BM25's share when a query term occurs in at most rare_term_max_chunks "
        "chunks (names, codes, identifiers).",
    )
    rare_term_max_chunks: PositiveInt = Field(
        3, description="A query term in at most this many chunks counts as rare."
    )
    rrf_k: PositiveInt = Field(60, description="Reciprocal rank fusion constant (fusion: rrf).")
    hnsw_m: int = Field(16, ge=4, le=128, description="HNSW graph degree.")
    hnsw_ef_construction: int = Field(200, ge=16, description="HNSW build-time beam width.")
    hnsw_ef_search: int = Field(
        128,
        ge=8,
        description="HNSW query-time beam width (recall against exact search: BENCHMARKS.md).",
    )
    exact_search_max_vectors: int = Field(
        10_000,
        ge=0,
        description="Collections with at most this many distinct vectors are searched exactly "
        "(a numpy scan) instead of by HNSW.",
    )

    @model_validator(mode="after")
    def _overlap(self) -> RagSpec:
        if self.chunk_overlap_tokens >= self.chunk_tokens:
            raise ValueError("chunk_overlap_tokens must be below chunk_tokens")
        if self.max_upload_bytes is not None and self.max_upload_bytes < self.max_document_bytes:
            raise ValueError(
                f"max_upload_bytes ({self.max_upload_bytes}) is below max_document_bytes "
                f"({self.max_document_bytes}): a document of the allowed size could not be "
                "uploaded"
            )
        taken = sorted({"model", "runner"} & set(self.embedding_engine_kwargs))
        if taken:
            raise ValueError(
                f"embedding_engine_kwargs sets {', '.join(taken)}, which tierline sets itself "
                "(embedding_model, and the pooling runner)"
            )
        if self.embedding_engine_kwargs and self.embedding_engine != "vllm":
            raise ValueError(
                "embedding_engine_kwargs are vLLM engine arguments: set embedding_engine: vllm"
            )
        if self.replicas > 1 and not self.uri.startswith(MILVUS_SERVER_SCHEMES):
            raise ValueError(
                f"replicas is {self.replicas} but uri {self.uri!r} is a local Milvus Lite file: "
                "one process owns such a file and each replica would hold the whole index in "
                "memory. Use replicas: 1, or a Milvus server uri (http://host:19530), where "
                "search runs in Milvus and replicas share it"
            )
        return self

    @property
    def upload_limit_bytes(self) -> int:
        """Body limit of `POST /v1/rag/collections/{name}/documents`."""
        if self.max_upload_bytes is not None:
            return self.max_upload_bytes
        return 2 * self.max_document_bytes + (64 << 10)

    @property
    def file_limit_bytes(self) -> int:
        """Largest uploaded file the gateway parses."""
        return (
            self.max_file_bytes if self.max_file_bytes is not None else 2 * self.max_document_bytes
        )


class EmbeddingsSpec(_Strict):
    """`POST /v1/embeddings`: served by the embeddings deployment, which runs the model set
    in `rag` (rag.embedding_model, its engine, replicas and resources) whether or not RAG
    itself is on."""

    enabled: bool = Field(
        False,
        description="Deploy the embeddings deployment and serve /v1/embeddings even when "
        "rag.enabled is off (with RAG on it is always served).",
    )
    served_model_name: str | None = Field(
        None,
        min_length=1,
        description="Model name in /v1/models and answers; default rag.embedding_model.",
    )
    price_per_1m_input_tokens: Price = 0.0


class ClusterSpec(_Strict):
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
