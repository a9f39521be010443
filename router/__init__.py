"""Tier routing: pure decisions from request features and tier state."""

from router.rules import RulesPolicy, decide
from router.types import Decision, RequestFeatures, RoutingError, TierState

__all__ = ["Decision", "RequestFeatures", "RoutingError", "RulesPolicy", "TierState", "decide"]
