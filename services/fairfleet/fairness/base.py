"""The strategy interface: small hook classes in the spirit of Flower's ``Strategy``.

A :class:`Strategy` turns the global vector and a round's :class:`SiteUpdate` s into the next
global vector, threading an explicit, serialisable :class:`StrategyState` (no hidden mutable
state on the instance, so a restarted aggregator that restores the state continues exactly).

Most strategies are *coefficient* strategies (:class:`WeightedUpdateStrategy`):

    w^{t+1} = ServerStep(w^t, g),   g = Σ_k a_k · s(τ_k) · Δ_k

composed from two parts, each with its own share of the state: a :class:`SiteWeighting` gives
the a_k (p_k for FedAvg, fairness weights otherwise; s(τ) is the staleness discount) and a
server step (steps.py) is ``w + η·g`` (server SGD) or an adaptive optimiser (Adam, Yogi), so
any weighting runs with any step. The O(K·d) work is one weighted sum (kernels.py).

Strategies do not validate update contents (NaN/Inf, norm bounds, signatures): the aggregator
does that before an update reaches a strategy. They check shapes and that losses are present.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from fairfleet.errors import ConfigError
from fairfleet.fairness.kernels import weighted_sum
from fairfleet.fairness.staleness import FEDBUFF_EXPONENT, check_exponent, staleness_weights
from fairfleet.fairness.state import StrategyState
from fairfleet.fairness.steps import SERVER_STEPS
from fairfleet.fairness.types import AggregateResult, NoisyStat, SiteUpdate


class Strategy(ABC):
    """Base class. Subclasses set ``name`` and implement :meth:`aggregate`."""

    name: str = ""
    requires_losses: bool = False
    """True if every update must carry its noisy loss release."""

    def initial_state(self) -> StrategyState:
        """State before the first round."""
        return StrategyState(strategy=self.name)

    def output(self, global_vec: np.ndarray, state: StrategyState) -> np.ndarray:
        """The model the strategy answers with after a round: the iterate sites train from,
        unless the method's guarantee is about another point (AFL's running average)."""
        return global_vec

    @abstractmethod
    def aggregate(
        self, global_vec: np.ndarray, updates: Sequence[SiteUpdate], state: StrategyState
    ) -> AggregateResult:
        """Next global model from this round's updates; must not mutate its inputs."""

    def params(self) -> dict[str, Any]:
        """The constructor parameters, JSON-ready (for run configs and logs)."""
        return {}

    def check_inputs(
        self, global_vec: np.ndarray, updates: Sequence[SiteUpdate], state: StrategyState
    ) -> None:
        if not isinstance(global_vec, np.ndarray) or global_vec.ndim != 1:
            raise ConfigError(
                f"global_vec must be a 1-D numpy array. Found {getattr(global_vec, 'shape', None)}."
            )
        if len(updates) == 0:
            raise ConfigError(f"Strategy '{self.name}' needs at least one update. Found 0.")
        if state.strategy != self.name:
            raise ConfigError(f"State belongs to strategy {state.strategy!r}, not {self.name!r}.")
        seen: set[str] = set()
        for u in updates:
            if u.dim != global_vec.shape[0]:
                raise ConfigError(
                    f"Update from site {u.site!r} has {u.dim} parameters; "
                    f"the model has {global_vec.shape[0]}."
                )
            if u.site in seen:
                raise ConfigError(f"Site {u.site!r} appears twice in one aggregation.")
            seen.add(u.site)
            if self.requires_losses and u.loss is None:
                raise ConfigError(
                    f"Strategy '{self.name}' needs a noisy loss from site {u.site!r}. Found None."
                )


def example_weights(updates: Sequence[SiteUpdate], weighting: str = "examples") -> np.ndarray:
    """p_k ∝ n_k ("examples") or uniform ("uniform"), normalised over this round's updates."""
    if weighting == "uniform":
        return np.full(len(updates), 1.0 / len(updates))
    n = np.array([u.n_examples for u in updates], dtype=np.float64)
    total = n.sum()
    return n / total if total > 0 else np.full(len(updates), 1.0 / len(updates))


def noisy_losses(updates: Sequence[SiteUpdate]) -> list[NoisyStat]:
    """The loss releases (callers checked ``requires_losses``)."""
    return [u.loss for u in updates if u.loss is not None]


def site_group(update: SiteUpdate) -> tuple[str, tuple[float, ...]]:
    """Fold terms of an update whose coefficient the whole round decides: its own group."""
    return f"site:{update.site}", (0.0,)


def example_log_weights(update: SiteUpdate, weighting: str) -> tuple[float, ...]:
    """Fold log-weights of p_k (:func:`example_weights`): ``n_k``, plus a component holding the
    n_k = 0 updates for a round where every n is 0 (then p is uniform)."""
    if weighting == "uniform":
        return (0.0,)
    n = update.n_examples
    return (math.log(n), -math.inf) if n > 0 else (-math.inf, 0.0)


def check_weighting(weighting: str) -> str:
    if weighting not in ("examples", "uniform"):
        raise ConfigError(f"weighting must be 'examples' or 'uniform'. Found {weighting!r}.")
    return weighting


def init_parameters(cls: type) -> tuple[list[str], bool]:
    """The named parameters of ``cls.__init__`` (no ``self``) and whether it takes ``**kwargs``."""
    params = inspect.signature(cls.__init__).parameters.values()  # type: ignore[misc]
    named = [
        p.name
        for p in params
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


class SiteWeighting(ABC):
    """The first half of a coefficient strategy: the a_k of ``g = Σ_k a_k s(τ_k) Δ_k`` (before the
    staleness discount), with its own part of the strategy state (multipliers, mixture weights).
    Composed with a :class:`~fairfleet.fairness.steps.ServerStep` by
    :class:`WeightedUpdateStrategy`."""

    name: ClassVar[str] = ""
    requires_losses: ClassVar[bool] = False
    """True if every update must carry its noisy loss release."""
    state_keys: ClassVar[frozenset[str]] = frozenset()
    """The names of the state arrays and scalars the weighting writes (disjoint from any step's)."""

    def initial_state(self, strategy: str) -> StrategyState:
        """State of ``strategy`` before the first round (the step adds its part when it runs)."""
        return StrategyState(strategy)

    def params(self) -> dict[str, Any]:
        """The weighting's parameters, JSON-ready: those of its ``__init__``, which keeps each
        (validated) in the attribute of the same name."""
        return {name: getattr(self, name) for name in init_parameters(type(self))[0]}

    @abstractmethod
    def coefficients(
        self, updates: Sequence[SiteUpdate], state: StrategyState
    ) -> tuple[np.ndarray, StrategyState, dict[str, Any]]:
        """(a_k per update, new state, diagnostics)."""

    def fold_terms(self, update: SiteUpdate, state: StrategyState) -> tuple[str, tuple[float, ...]]:
        """How ``update`` folds into the round's sums (fold.py): its group and the log of its
        arrival weight per component, known from the update and the round's starting state
        (the staleness discount is added by the fold). The coefficient must then be
        a_k = s(τ_k) Σ_j G_{group,j} w_{k,j} with G decided at close. The default, each update
        its own group, always holds (and keeps one vector per update)."""
        return site_group(update)

    def after_step(self, new_global: np.ndarray, state: StrategyState) -> StrategyState:
        """State after the server step produced ``new_global`` (AFL's running average)."""
        return state

    def output(self, global_vec: np.ndarray, state: StrategyState) -> np.ndarray:
        """See :meth:`Strategy.output`."""
        return global_vec


class WeightedUpdateStrategy(Strategy):
    """``w^{t+1} = ServerStep(w^t, Σ_k a_k s(τ_k) Δ_k)``: a :class:`SiteWeighting` (the a_k)
    composed with a server step named by ``server_step`` (steps.py: ``sgd``, ``adam``, ``yogi``)
    built from ``server_lr`` and ``step_params``.

    The strategy is named after its weighting (or the registered class); a step other than the
    class's ``default_step`` adds ``+<step>`` (``gap+adam``), unless ``step_names`` names the
    pair (``fedavg`` with ``adam`` is ``fedadam``). The name is in the state and checkpoints, so a
    checkpoint of ``gap`` does not restore into ``gap+adam``.
    """

    default_step: ClassVar[str] = "sgd"
    step_names: ClassVar[dict[str, str]] = {}

    def __init__(
        self,
        weighting: SiteWeighting,
        server_step: str | None = None,
        server_lr: float | None = None,
        staleness_exponent: float = FEDBUFF_EXPONENT,
        **step_params: Any,
    ) -> None:
        step_name = self.default_step if server_step is None else server_step
        if not isinstance(step_name, str):
            raise ConfigError(f"server_step must be a step name (string). Found {step_name!r}.")
        base = type(self).name or weighting.name
        try:
            step_cls = SERVER_STEPS.get(step_name)
        except ConfigError as exc:
            raise ConfigError(f"Strategy {base!r}: server_step: {exc}") from exc
        step_known, _ = init_parameters(step_cls)
        unknown = sorted(set(step_params) - set(step_known))
        if unknown:
            known = sorted(set(init_parameters(type(self))[0] + step_known))
            raise ConfigError(
                f"Strategy {base!r} with server_step {step_name!r} has no parameter(s) "
                f"{', '.join(map(repr, unknown))}. Known: {', '.join(known)}."
            )
        self.weighting = weighting
        self.step = step_cls(server_lr=server_lr, **step_params)
        shared = sorted(weighting.state_keys & step_cls.state_keys)
        if shared:
            raise ConfigError(
                f"Site weighting {weighting.name!r} and server step {step_name!r} both write the "
                f"state key(s) {', '.join(map(repr, shared))}; they cannot be composed."
            )
        self.staleness_exponent = check_exponent(staleness_exponent)
        self.requires_losses = weighting.requires_losses
        if step_name == self.default_step:
            self.name = base
        else:
            self.name = self.step_names.get(step_name, f"{base}+{step_name}")

    def params(self) -> dict[str, Any]:
        return {
            **self.weighting.params(),
            "server_step": self.step.name,
            **self.step.params(),
            "staleness_exponent": self.staleness_exponent,
        }

    def initial_state(self) -> StrategyState:
        return self.weighting.initial_state(self.name)

    def output(self, global_vec: np.ndarray, state: StrategyState) -> np.ndarray:
        return self.weighting.output(global_vec, state)

    def coefficients(
        self, updates: Sequence[SiteUpdate], state: StrategyState
    ) -> tuple[np.ndarray, StrategyState, dict[str, Any]]:
        """The weighting's (a_k per update, new state, diagnostics)."""
        return self.weighting.coefficients(updates, state)

    def fold_terms(self, update: SiteUpdate, state: StrategyState) -> tuple[str, tuple[float, ...]]:
        """The weighting's fold declaration (:meth:`SiteWeighting.fold_terms`)."""
        return self.weighting.fold_terms(update, state)

    def server_step(
        self, global_vec: np.ndarray, pseudo_gradient: np.ndarray, state: StrategyState
    ) -> tuple[np.ndarray, StrategyState]:
        """The step on ``pseudo_gradient`` (a fresh array the step may reuse), then the
        weighting's :meth:`~SiteWeighting.after_step`."""
        new_global, state = self.step.apply(global_vec, pseudo_gradient, state)
        return new_global, self.weighting.after_step(new_global, state)

    def round_coefficients(
        self, global_vec: np.ndarray, updates: Sequence[SiteUpdate], state: StrategyState
    ) -> tuple[np.ndarray, StrategyState, dict[str, Any]]:
        """a_k · s(τ_k) for the round's updates (only their scalars are read), new state,
        diagnostics: the part of :meth:`aggregate` before the weighted sum."""
        self.check_inputs(global_vec, updates, state)
        coeffs, state, diagnostics = self.coefficients(updates, state)
        return coeffs * staleness_weights(updates, self.staleness_exponent), state, diagnostics

    def finish(
        self,
        global_vec: np.ndarray,
        updates: Sequence[SiteUpdate],
        coeffs: np.ndarray,
        pseudo_gradient: np.ndarray,
        state: StrategyState,
        diagnostics: dict[str, Any],
    ) -> AggregateResult:
        """The server step on ``Σ_k a_k Δ_k`` (a fresh float32 array the step may reuse)."""
        new_global, state = self.server_step(global_vec, pseudo_gradient, state)
        diagnostics["coefficients"] = {
            u.site: float(c) for u, c in zip(updates, coeffs, strict=True)
        }
        diagnostics["n_updates"] = len(updates)
        return AggregateResult(new_global=new_global, new_state=state, diagnostics=diagnostics)

    def aggregate(
        self, global_vec: np.ndarray, updates: Sequence[SiteUpdate], state: StrategyState
    ) -> AggregateResult:
        coeffs, state, diagnostics = self.round_coefficients(global_vec, updates, state)
        pseudo_gradient = weighted_sum([u.delta for u in updates], coeffs)
        return self.finish(global_vec, updates, coeffs, pseudo_gradient, state, diagnostics)
