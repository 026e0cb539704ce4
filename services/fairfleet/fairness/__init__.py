"""fairfleet.fairness: aggregation strategies, noise-aware estimators, strategy state (pure math).

Public API::

    SiteUpdate, NoisyStat, AggregateResult          (types)
    Strategy, WeightedUpdateStrategy                (base classes)
    SiteWeighting, ServerStep, SERVER_STEPS         (the two parts of a WeightedUpdateStrategy)
    build_strategy(name, **params), available_strategies(), register_strategy(name, cls)
    StrategyState, state_to_bytes, state_from_bytes
    estimators: class_risk_estimates, shrink_toward_mean, debiased_range, debiased_squared_norm
    staleness_weight, staleness_weights             (buffered async)
    weighted_sum, allocate_update_matrix, project_simplex   (kernels)
    RoundFold                                       (a round as a fold in bounded memory)
"""

from fairfleet.fairness.base import SiteWeighting, Strategy, WeightedUpdateStrategy
from fairfleet.fairness.estimators import (
    ClassEstimate,
    ClassRiskReport,
    GapEstimate,
    class_risk_estimates,
    debiased_range,
    debiased_squared_norm,
    shrink_toward_mean,
)
from fairfleet.fairness.fold import Partial, RoundFold
from fairfleet.fairness.kernels import allocate_update_matrix, project_simplex, weighted_sum
from fairfleet.fairness.registry import (
    STRATEGIES,
    available_strategies,
    build_strategy,
    register_strategy,
)
from fairfleet.fairness.staleness import staleness_weight, staleness_weights
from fairfleet.fairness.state import StrategyState, state_from_bytes, state_to_bytes
from fairfleet.fairness.steps import SERVER_STEPS, ServerStep
from fairfleet.fairness.types import AggregateResult, NoisyStat, SiteUpdate

__all__ = [
    "SERVER_STEPS",
    "STRATEGIES",
    "AggregateResult",
    "ClassEstimate",
    "ClassRiskReport",
    "GapEstimate",
    "NoisyStat",
    "Partial",
    "RoundFold",
    "ServerStep",
    "SiteUpdate",
    "SiteWeighting",
    "Strategy",
    "StrategyState",
    "WeightedUpdateStrategy",
    "allocate_update_matrix",
    "available_strategies",
    "build_strategy",
    "class_risk_estimates",
    "debiased_range",
    "debiased_squared_norm",
    "project_simplex",
    "register_strategy",
    "shrink_toward_mean",
    "staleness_weight",
    "staleness_weights",
    "state_from_bytes",
    "state_to_bytes",
    "weighted_sum",
]
