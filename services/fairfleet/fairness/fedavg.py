"""FedAvg's weighting p_k, and the registered FedAvg, FedAdam and FedYogi (Reddi et al., ICLR 2021).

FedAvg (McMahan et al. 2017): ``w^{t+1} = w^t + η Σ_k p_k Δ_k`` with p_k ∝ n_k
(:class:`ExampleWeighting` composed with server SGD).

FedAdam / FedYogi (FedOpt, Reddi et al. 2021, Algorithm 2) are the same weighting composed with
the ``adam`` / ``yogi`` server step (steps.py). They are also what ``fedavg`` with
``server_step: adam`` / ``yogi`` builds: the same strategy, with the same name and state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from fairfleet.errors import ConfigError
from fairfleet.fairness.base import (
    SiteWeighting,
    WeightedUpdateStrategy,
    check_weighting,
    example_log_weights,
    example_weights,
)
from fairfleet.fairness.staleness import FEDBUFF_EXPONENT
from fairfleet.fairness.state import StrategyState
from fairfleet.fairness.types import SiteUpdate


class ExampleWeighting(SiteWeighting):
    """a_k = p_k: ``weighting`` "examples" (p_k ∝ n_k) or "uniform" (1/K)."""

    name: ClassVar[str] = "fedavg"

    def __init__(self, weighting: str) -> None:
        self.weighting = check_weighting(weighting)

    def coefficients(
        self, updates: Sequence[SiteUpdate], state: StrategyState
    ) -> tuple[np.ndarray, StrategyState, dict[str, Any]]:
        return example_weights(updates, self.weighting), state, {}

    def fold_terms(self, update: SiteUpdate, state: StrategyState) -> tuple[str, tuple[float, ...]]:
        """One group: a_k = n_k / Σ n (or 1/K)."""
        return "", example_log_weights(update, self.weighting)


class FedAvg(WeightedUpdateStrategy):
    """Weighted average of the updates, then the server step (SGD unless ``server_step``)."""

    name = "fedavg"
    step_names: ClassVar[dict[str, str]] = {"adam": "fedadam", "yogi": "fedyogi"}

    def __init__(
        self,
        weighting: str = "examples",
        server_lr: float | None = None,
        staleness_exponent: float = FEDBUFF_EXPONENT,
        *,
        server_step: str | None = None,
        **step_params: Any,
    ) -> None:
        super().__init__(
            ExampleWeighting(weighting), server_step, server_lr, staleness_exponent, **step_params
        )


class FedOpt(WeightedUpdateStrategy):
    """FedAvg's weighting with the adaptive server step ``default_step`` and its parameters
    (``beta1``, ``beta2``, ``tau``: steps.py). Not registered itself: :class:`FedAdam` and
    :class:`FedYogi` name its two steps."""

    def __init__(
        self,
        server_lr: float | None = None,
        weighting: str = "examples",
        staleness_exponent: float = FEDBUFF_EXPONENT,
        **step_params: Any,
    ) -> None:
        if "server_step" in step_params:  # the step is what the preset names
            raise ConfigError(
                f"Strategy {self.name!r} has no parameter 'server_step' (its step is "
                f"{self.default_step!r}; other steps: 'fedavg' with server_step). "
                f"Found {step_params['server_step']!r}."
            )
        weighting_ = ExampleWeighting(weighting)
        super().__init__(weighting_, None, server_lr, staleness_exponent, **step_params)


class FedAdam(FedOpt):
    """``fedavg`` with ``server_step: adam`` (default ``server_lr`` 0.1)."""

    name = "fedadam"
    default_step: ClassVar[str] = "adam"


class FedYogi(FedOpt):
    """``fedavg`` with ``server_step: yogi`` (default ``server_lr`` 0.01)."""

    name = "fedyogi"
    default_step: ClassVar[str] = "yogi"
