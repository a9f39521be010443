"""Tier routing: pure decisions from request features and tier state."""

from router.learned import CalibrationState, LearnedPolicy, decide_learned, recalibrate
from router.rules import RulesPolicy, decide
from router.types import Decision, RequestFeatures, RoutingError, TierState

__all__ = [
    "CalibrationState",
    "Decision",
    "LearnedPolicy",
    "RequestFeatures",
    "RoutingError",
    "RulesPolicy",
    "TierState",
    "decide",
    "decide_learned",
    "recalibrate",
]
