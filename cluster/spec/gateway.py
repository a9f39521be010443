"""The OpenAI-compatible ingress: keys, quotas, the Responses store, limits."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator
from tierline.cluster.spec.base import (
    NAME_PATTERN,
    PositiveInt,
    Strict,
)

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
ImageHost = Annotated[str, Field(pattern=rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")]
"""A host name in lower case, or `*.` and one: that host's subdomains."""


class AuthSpec(Strict):
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


class QuotaSpec(Strict):
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
    on_budget: Literal["refuse", "downgrade"] = Field(
        "refuse",
        description="Past tokens_per_min: `refuse` answers 429; `downgrade` serves an auto "
        "request on the cheapest tier that can take it (route reason "
        "`downgraded:budget;expected_loss=L`), charged to downgrade_tokens_per_min. Requests "
        "that name a model, grounded RAG chats, requests_per_min and max_concurrent still "
        "refuse.",
    )
    downgrade_tokens_per_min: PositiveInt | None = Field(
        None,
        description="on_budget: downgrade. The hard ceiling past the budget: tokens per "
        "rolling minute served on the cheapest tier once tokens_per_min is spent (charged "
        "like tokens_per_min). Unset: as many as tokens_per_min.",
    )

    @model_validator(mode="after")
    def _downgrade_needs_budget(self) -> QuotaSpec:
        if self.on_budget == "downgrade" and self.tokens_per_min is None:
            raise ValueError("on_budget: downgrade needs tokens_per_min (the budget)")
        if self.downgrade_tokens_per_min is not None and self.on_budget != "downgrade":
            raise ValueError("downgrade_tokens_per_min needs on_budget: downgrade")
        return self

    @property
    def downgrade_ceiling(self) -> int | None:
        """Tokens per minute served past the budget (None: no downgrade)."""
        if self.on_budget != "downgrade":
            return None
        return self.downgrade_tokens_per_min or self.tokens_per_min


class TenantSpec(QuotaSpec):
    name: str = Field(pattern=NAME_PATTERN, description="Tenant name, as in the keys file.")


class ResponsesSpec(Strict):
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


class RequestLimitsSpec(Strict):
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
    image_url_hosts: list[ImageHost] = Field(
        default_factory=list,
        description="Hosts whose https image URLs a vision tier may fetch (`example.com`, or "
        "`*.example.com` for its subdomains). Empty (the default): only inline `data:` images "
        "are accepted, and any other image URL gets 400 before the engine's fetcher sees it.",
    )


class LoopShareSpec(Strict):
    """Each tenant's fair share of a gateway replica's event loop
    (`deployments.gateway.pipeline.loop_share`). Every request's loop time (reading,
    parsing and validating its body, counting its tokens, passing its answer on) is
    charged to its tenant, and so is the CPU time of the
    work it hands to worker threads, here or in the RAG replica (counting a long prompt's
    tokens, a filtered RAG search, chunking an upload); while another tenant has
    requests at the replica, a tenant past its share is refused with 429
    `loop_share_exceeded` and `Retry-After` before its body is read."""

    enabled: bool = Field(
        True,
        description="Refuse a tenant past max_fraction of the replica's event loop while "
        "other tenants are active. Off: one tenant's expensive requests (even ones refused "
        "with 400) can slow every other tenant's.",
    )
    max_fraction: float = Field(
        0.2,
        gt=0,
        le=1,
        description="Fraction of the replica's event-loop time over window_s one tenant's "
        "requests may take while another tenant has had a request there within window_s. "
        "Only the heaviest tenant is refused past it: a tenant alone on the replica, or "
        "one taking less of the loop than another active tenant, never is.",
    )
    busy_fraction: float = Field(
        0.8,
        gt=0,
        le=10,
        description="The share applies only while the loop is contended: the tenants' loop "
        "time together (long steps weighted as below) past this fraction of window_s. Below "
        "it no tenant is refused, however much of the loop it takes: the others do not wait.",
    )
    window_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="Time constant of the loop-time average (an exponentially decaying sum), "
        "and how recent another tenant's request must be for the share to apply.",
    )
    long_step_s: float = Field(
        0.001,
        gt=0,
        le=1,
        description="A step of one request on the loop (the code between two awaits) longer "
        "than this is charged its length times (length / long_step_s): every request that "
        "becomes ready meanwhile waits for all of it, so a few long steps hurt other "
        "tenants' latency more than many short ones. One step is charged at most window_s.",
    )


class GatewaySpec(Strict):
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
        "LLM's LLMServer (the earlier path). A tier whose replicas have not published a "
        "relay yet (starting, or scaled to zero) takes the serve path for those requests "
        "(a handle call starts a tier at zero replicas); autoscaled tiers are relayed, "
        "their replicas reporting relayed requests to Serve's autoscaler.",
    )
    stream_interval_ms: float = Field(
        20.0,
        ge=0,
        le=1000,
        description="On the relay path, a streamed answer's chunks after the first two "
        "(chat's role chunk and the first token, so time to first token is untouched) are "
        "written at most once per this many milliseconds, the tokens made meanwhile "
        "together; the last chunk goes out at once. Each write costs a socket send in the "
        "engine replica and a read, a parse and a send in the gateway, once per token "
        "without pacing. 0: one write per token, as vLLM makes them.",
    )
    tenant_cache_salt: bool = Field(
        True,
        description="Give every engine request its tenant's vLLM `cache_salt`, so cached "
        "prompt prefixes are shared within a tenant and never across tenants (time to first "
        "token would tell one tenant what another sent). A client's own cache_salt is mixed "
        "into its tenant's, never used as is. With one tenant it changes nothing; off, every "
        "tenant shares one prefix cache.",
    )
    readyz_cache_s: float = Field(
        1.0,
        ge=0,
        le=30,
        description="How long /readyz reuses its last tier probe: a flood of readiness calls "
        "(anyone may make them) costs at most one probe per tier per interval. 0: probe on "
        "every call.",
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
    loop_share: LoopShareSpec = Field(
        default_factory=LoopShareSpec,
        description="Each tenant's fair share of a gateway replica's event loop.",
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
