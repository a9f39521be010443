"""Tier routing: pure decisions from request features and tier state."""

if __name__ != "tierline.router":  # the folder router/ installs as tierline.router only
    raise ImportError(
        f"import tierline.router, not {__name__} (`pip install -e .` maps router/ to it)"
    )

from tierline.router.learned import (
    CalibrationState,
    LearnedPolicy,
    LossBound,
    decide_learned,
    recalibrate,
)
from tierline.router.rules import RulesPolicy, decide
from tierline.router.types import Decision, RequestFeatures, RoutingError, TierState

__all__ = [
    "CalibrationState",
    "Decision",
    "LearnedPolicy",
    "LossBound",
    "RequestFeatures",
    "RoutingError",
    "RulesPolicy",
    "TierState",
    "decide",
    "decide_learned",
    "recalibrate",
]
