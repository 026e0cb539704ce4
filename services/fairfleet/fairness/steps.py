"""Server steps: the second half of a coefficient strategy, ``w^{t+1} = step(w^t, g)``.

A :class:`~fairfleet.fairness.base.WeightedUpdateStrategy` is a site weighting (the a_k of
``g = Σ_k a_k s(τ_k) Δ_k``) composed with one of these, chosen by name (``server_step``), so any
weighting runs with any step. Each step owns its part of the strategy state (the moments).

* ``sgd``: server SGD ``w + η g`` (FedAvg, McMahan et al. 2017; η = ``server_lr``, default 1).
* ``adam`` / ``yogi``: FedOpt (Reddi et al., ICLR 2021, Algorithm 2) on the pseudo-gradient g::

      m_t = β₁ m_{t−1} + (1 − β₁) g
      v_t = β₂ v_{t−1} + (1 − β₂) g²                         (Adam)
      v_t = v_{t−1} − (1 − β₂) g² · sign(v_{t−1} − g²)       (Yogi)
      w^{t+1} = w^t + η m_t / (√v_t + τ)

  with m_{−1} = 0, v_{−1} = τ² (the paper's v_{−1} ≥ τ²) and no bias correction, as in the
  paper; default η 0.1 (Adam) and 0.01 (Yogi). The moments are state arrays ``m`` and ``v`` (and
  the counter ``server_steps``), created at the first step, so the aggregator checkpoints them
  with the model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from fairfleet.checks import check_positive
from fairfleet.errors import ConfigError
from fairfleet.fairness.state import StrategyState
from fairfleet.registry import Registry, subclass_of


class ServerStep(ABC):
    """``(w^t, g, state) -> (w^{t+1}, state)``; subclasses set ``name`` and ``default_lr``."""

    name: ClassVar[str] = ""
    default_lr: ClassVar[float] = 1.0
    state_keys: ClassVar[frozenset[str]] = frozenset()
    """The names of the state arrays and scalars the step writes (disjoint from its weighting's)."""

    def __init__(self, server_lr: float | None = None) -> None:
        lr = self.default_lr if server_lr is None else server_lr
        self.server_lr = check_positive("server_lr", lr)

    def params(self) -> dict[str, Any]:
        """The step's parameters, JSON-ready."""
        return {"server_lr": self.server_lr}

    @abstractmethod
    def apply(
        self, global_vec: np.ndarray, pseudo_gradient: np.ndarray, state: StrategyState
    ) -> tuple[np.ndarray, StrategyState]:
        """The next model. ``pseudo_gradient`` is a fresh float32 array owned by the strategy (the
        step may update it in place); ``global_vec`` must not be mutated."""


class ServerSGD(ServerStep):
    """``w + η g``: one in-place pass over d (none but the add when η = 1), no temporary."""

    name: ClassVar[str] = "sgd"
    default_lr: ClassVar[float] = 1.0

    def apply(
        self, global_vec: np.ndarray, pseudo_gradient: np.ndarray, state: StrategyState
    ) -> tuple[np.ndarray, StrategyState]:
        if self.server_lr != 1.0:
            pseudo_gradient *= np.float32(self.server_lr)
        pseudo_gradient += global_vec
        return pseudo_gradient, state


class AdaptiveServerStep(ServerStep):
    """FedOpt's adaptive step; subclasses give the second-moment update (Adam, Yogi)."""

    state_keys: ClassVar[frozenset[str]] = frozenset({"m", "v", "server_steps"})

    def __init__(
        self,
        server_lr: float | None = None,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
    ) -> None:
        super().__init__(server_lr)
        for label, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= beta < 1.0:
                raise ConfigError(f"{label} must be in [0, 1). Found {beta}.")
        self.beta1, self.beta2 = float(beta1), float(beta2)
        self.tau = check_positive("tau", tau)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "beta1": self.beta1, "beta2": self.beta2, "tau": self.tau}

    @abstractmethod
    def second_moment(self, v: np.ndarray, g2: np.ndarray) -> np.ndarray:
        """v_t from v_{t−1} and g² (float32)."""

    def apply(
        self, global_vec: np.ndarray, pseudo_gradient: np.ndarray, state: StrategyState
    ) -> tuple[np.ndarray, StrategyState]:
        d = global_vec.shape[0]
        m = state.arrays.get("m")
        v = state.arrays.get("v")
        if m is None or v is None or m.shape != (d,) or v.shape != (d,):
            m = np.zeros(d, dtype=np.float32)
            v = np.full(d, self.tau**2, dtype=np.float32)
        g = pseudo_gradient
        m_new = np.float32(self.beta1) * m + np.float32(1 - self.beta1) * g
        v_new = self.second_moment(v, g * g)
        step = m_new / (np.sqrt(v_new) + np.float32(self.tau))
        new = global_vec.astype(np.float32, copy=True)
        new += np.float32(self.server_lr) * step
        rounds = int(state.scalars.get("server_steps", 0)) + 1
        return new, state.replace(arrays={"m": m_new, "v": v_new}, scalars={"server_steps": rounds})


class ServerAdam(AdaptiveServerStep):
    """Adam's exponential average of g²."""

    name: ClassVar[str] = "adam"
    default_lr: ClassVar[float] = 0.1

    def second_moment(self, v: np.ndarray, g2: np.ndarray) -> np.ndarray:
        return np.float32(self.beta2) * v + np.float32(1 - self.beta2) * g2


class ServerYogi(AdaptiveServerStep):
    """Yogi's additive, sign-controlled update of v (v changes by at most (1 − β₂) g²)."""

    name: ClassVar[str] = "yogi"
    default_lr: ClassVar[float] = 0.01

    def second_moment(self, v: np.ndarray, g2: np.ndarray) -> np.ndarray:
        return v - np.float32(1 - self.beta2) * g2 * np.sign(v - g2)


SERVER_STEPS: Registry[type[ServerStep]] = Registry(
    "server step", None, accept=subclass_of(ServerStep, "Server step")
)
"""The server steps by name: the three defined above (no entry-point group)."""
for _step in (ServerSGD, ServerAdam, ServerYogi):
    SERVER_STEPS.register(_step.name, _step)
