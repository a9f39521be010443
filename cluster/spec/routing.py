"""How `auto` requests pick a tier: the router's policies and their parameters."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from tierline.cluster.spec.base import (
    PositiveInt,
    Strict,
)


class RulesParams(Strict):
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


class LearnedParams(Strict):
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


class CascadeSpec(Strict):
    """Non-streaming auto requests: keep a cheap tier's answer unless it looks unsure."""

    enabled: bool = Field(False, description="Escalate unsure answers to the next tier up.")
    logprob_threshold: float = Field(
        -1.5,
        le=0,
        description="Escalate when the answer's mean token log-probability is below this.",
    )
    max_escalations: int = Field(1, ge=1, le=8, description="Escalations per request at most.")


class LoadDowngradeSpec(Strict):
    """Auto requests whose tier is full go a tier down instead of being refused, within a
    budget of predicted quality loss accounted apart from `router.max_quality_loss`."""

    enabled: bool = Field(
        True,
        description="Learned policy: when the tier chosen for an auto request has no free "
        "slot at the gateway (its admission limit), send the request to the tier below "
        "with room and the smallest predicted quality loss, instead of answering 503. "
        "Route reason `downgraded:load;expected_loss=L`. The rules policy predicts no "
        "loss, so it never downgrades for load.",
    )
    max_quality_loss: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="The load-loss budget: the mean predicted quality loss over the last "
        "`window_requests` requests sent down for load, at each gateway replica, stays at "
        "most this. Unset: router.max_quality_loss when that is set, else 0.1.",
    )
    window_requests: PositiveInt = Field(
        1000, description="Load-downgraded requests the budget's mean is taken over."
    )


class RouterSpec(Strict):
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
    load_downgrade: LoadDowngradeSpec = Field(default_factory=LoadDowngradeSpec)
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

    def load_loss_budget(self) -> float:
        """The load-loss budget in force (`load_downgrade.max_quality_loss`, resolved)."""
        own = self.load_downgrade.max_quality_loss
        if own is not None:
            return own
        return self.max_quality_loss if self.max_quality_loss is not None else 0.1

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
