"""A round as a fold: each accepted update is added into per-group sums on arrival, so a round
holds O(groups × d) floats however many sites report (pure numpy, no I/O).

A coefficient strategy's step is ``g = Σ_k a_k Δ_k`` (a_k including the staleness discount). The
a_k depend on the whole round (p_k = n_k / Σ n, a normaliser, a class count...), but for every
built-in they factor as

    a_k = Σ_j G_{g(k), j} · w_{k, j}

where the *arrival weights* w_{k,j} (component j of update k) are known when update k arrives
and the *group factors* G_{g,j} only at close. :meth:`Strategy.fold_terms` declares the group
g(k) and the log-weights log w_{k,j} (−inf: the update is not in component j). The fold keeps
``S_{g,j} = Σ_{k∈g} w_{k,j} Δ_k`` (float64, with a running maximum of the log-weights so that no
weight overflows: a running log-sum-exp) and, per update, only its scalars (site, class, n_k,
loss, staleness, ‖Δ_k‖²). At close the strategy's own :meth:`coefficients` run on those scalars —
the same code as the batch path — and G_g is solved from a_k = Σ_j G_{g,j} w_{k,j} (least squares
over the group's updates, which must fit to 1e-9 of the largest |a_k|: a declaration that does not
hold raises instead of returning a different model). Then ``g = Σ_{g,j} G_{g,j} S_{g,j}``.

A strategy that truly needs every update declares each update its own group (the default for
coefficient strategies that do not override ``fold_terms``): one sum per update, what the batch
path holds. A strategy that is not a coefficient strategy keeps its updates and aggregates them
at close (:attr:`RoundFold.folds` is False).

A round spread over several processes (docs/aggregator.md, "Several workers per model"): each
folds part of the updates and hands over :meth:`RoundFold.partial` (its sums, their running
maxima, and the scalars of its updates); :meth:`RoundFold.merge` adds partials into one fold.
Sums of one (group, component) add after bringing them to a common maximum, so merging the
partials of any split of the round's updates gives the fold of all of them (to float tolerance:
only the order of the additions differs). Kept updates (a strategy that does not fold) have no
partial: such a strategy runs in one process.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from fairfleet.errors import ConfigError
from fairfleet.fairness.base import Strategy, WeightedUpdateStrategy
from fairfleet.fairness.staleness import staleness_weight
from fairfleet.fairness.state import StrategyState
from fairfleet.fairness.types import AggregateResult, SiteUpdate

RESCALE_LOG_MARGIN = 30.0
"""A sum is rescaled only when a log-weight exceeds its running maximum by this much (weights
up to e^30 ≈ 1e13 relative to the first are fine in float64), so typical rounds never rescale."""
FIT_TOLERANCE = 1e-9
"""Largest |a_k − Σ_j G_{g,j} w_{k,j}| allowed, relative to the largest |a_k| of the round."""


@dataclass
class _Sum:
    """``S = Σ exp(l_k − top) Δ_k`` of one (group, component)."""

    top: float
    total: np.ndarray


@dataclass
class _Entry:
    record: SiteUpdate  # the update's scalars; its delta is a zero-stride placeholder
    group: str
    log_weights: tuple[float, ...]


@dataclass(frozen=True)
class PartialEntry:
    """One folded update: its scalars (``record.delta`` is a placeholder), group, log-weights."""

    record: SiteUpdate
    group: str
    log_weights: tuple[float, ...]


@dataclass(frozen=True)
class PartialSum:
    """``total = Σ exp(l_k − top) Δ_k`` of one (group, component) over a partial's updates."""

    group: str
    component: int
    top: float
    total: np.ndarray


@dataclass(frozen=True)
class Partial:
    """Part of a round's fold, to be merged by another process: O(groups × d) floats plus a few
    scalars per update. ``strategy`` and ``dim`` must match the fold it is merged into."""

    strategy: str
    dim: int
    entries: tuple[PartialEntry, ...]
    sums: tuple[PartialSum, ...]

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(e.record.site for e in self.entries)


@dataclass
class RoundFold:
    """The open round of ``strategy`` from ``state``: :meth:`add` each accepted update,
    :meth:`close` once (the strategy's :meth:`~Strategy.aggregate` result, to float tolerance)."""

    strategy: Strategy
    state: StrategyState
    dim: int
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _sums: dict[tuple[str, int], _Sum] = field(default_factory=dict)
    _kept: list[SiteUpdate] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ConfigError(f"RoundFold dim must be >= 1. Found {self.dim}.")
        self._placeholder = np.broadcast_to(np.zeros(1, dtype=np.float32), (self.dim,))

    @property
    def folds(self) -> bool:
        """True if updates are folded into sums; False if they are kept whole."""
        return isinstance(self.strategy, WeightedUpdateStrategy)

    def __len__(self) -> int:
        return len(self._entries) if self.folds else len(self._kept)

    def sites(self) -> Iterator[str]:
        return iter(self._entries) if self.folds else (u.site for u in self._kept)

    @property
    def vectors_held(self) -> int:
        """How many d-vectors the round holds (sums, or kept updates)."""
        return len(self._sums) if self.folds else len(self._kept)

    def add(self, update: SiteUpdate) -> None:
        """Fold one accepted update in (its array is not kept)."""
        if update.dim != self.dim:
            raise ConfigError(
                f"Update from site {update.site!r} has {update.dim} parameters; "
                f"the model has {self.dim}."
            )
        if update.site in self._entries or any(u.site == update.site for u in self._kept):
            raise ConfigError(f"Site {update.site!r} appears twice in one aggregation.")
        if not self.folds:
            self._kept.append(update)
            return
        strategy = self.strategy
        assert isinstance(strategy, WeightedUpdateStrategy)
        if strategy.requires_losses and update.loss is None:
            raise ConfigError(
                f"Strategy '{strategy.name}' needs a noisy loss from site {update.site!r}. "
                "Found None."
            )
        group, logs = strategy.fold_terms(update, self.state)
        stale = math.log(staleness_weight(update.staleness, strategy.staleness_exponent))
        logs = tuple(x + stale for x in logs)
        bad = [x for x in logs if not (math.isfinite(x) or x == -math.inf)]
        if bad or not logs:
            raise ConfigError(
                f"Strategy '{strategy.name}' gave site {update.site!r} the log-weights {logs}."
            )
        vector = update.delta
        for j, log_w in enumerate(logs):
            if log_w == -math.inf:
                continue
            acc = self._sums.get((group, j))
            if acc is None:
                acc = self._sums[(group, j)] = _Sum(log_w, np.zeros(self.dim, dtype=np.float64))
            elif log_w > acc.top + RESCALE_LOG_MARGIN:
                acc.total *= math.exp(acc.top - log_w)
                acc.top = log_w
            acc.total += math.exp(log_w - acc.top) * vector
        squared_norm = update.squared_norm
        if squared_norm is None:
            squared_norm = float(np.dot(vector, vector))
        record = replace(update, delta=self._placeholder, squared_norm=squared_norm)
        self._entries[update.site] = _Entry(record, group, logs)

    def partial(self) -> Partial:
        """This fold's state as a :class:`Partial` (copies: later adds do not change it)."""
        if not self.folds:
            raise ConfigError(
                f"Strategy '{self.strategy.name}' does not fold its updates into sums (it needs "
                "every update at close), so a round of it cannot be split into partials; run "
                "one aggregator worker for it."
            )
        entries = tuple(
            PartialEntry(e.record, e.group, e.log_weights) for _, e in sorted(self._entries.items())
        )
        sums = tuple(
            PartialSum(g, j, acc.top, acc.total.copy())
            for (g, j), acc in sorted(self._sums.items())
        )
        return Partial(self.strategy.name, self.dim, entries, sums)

    def merge(self, partials: Iterable[Partial]) -> None:
        """Add ``partials`` (of this round, from other folds) into this fold. Every partial is
        checked before any is added: a wrong strategy or length, or a site already in the fold
        or in two partials, raises and changes nothing."""
        partials = list(partials)
        if partials and not self.folds:
            self.partial()  # raises: this strategy has no partials
        seen = set(self._entries)
        for part in partials:
            if part.strategy != self.strategy.name or part.dim != self.dim:
                raise ConfigError(
                    f"A partial of strategy '{part.strategy}' with {part.dim} parameters cannot "
                    f"be merged into a round of '{self.strategy.name}' with {self.dim}."
                )
            for entry in part.entries:
                if entry.record.site in seen:
                    raise ConfigError(
                        f"Site {entry.record.site!r} appears twice in one aggregation."
                    )
                seen.add(entry.record.site)
            for acc in part.sums:
                if acc.total.shape != (self.dim,):
                    raise ConfigError(
                        f"A partial sum of group {acc.group!r} has shape {acc.total.shape}; "
                        f"the model has {self.dim} parameters."
                    )
        for part in partials:
            for entry in part.entries:
                record = replace(entry.record, delta=self._placeholder)
                self._entries[record.site] = _Entry(record, entry.group, entry.log_weights)
            for acc in part.sums:
                mine = self._sums.get((acc.group, acc.component))
                if mine is None:
                    total = np.asarray(acc.total, dtype=np.float64).copy()
                    self._sums[(acc.group, acc.component)] = _Sum(acc.top, total)
                elif acc.top > mine.top:
                    mine.total *= math.exp(mine.top - acc.top)
                    mine.total += acc.total
                    mine.top = acc.top
                else:
                    mine.total += math.exp(acc.top - mine.top) * acc.total

    def records(self) -> list[SiteUpdate]:
        """The round's updates by site, without their arrays (placeholders of the right length)."""
        if not self.folds:
            return sorted(self._kept, key=lambda u: u.site)
        return [self._entries[s].record for s in sorted(self._entries)]

    def close(self, global_vec: np.ndarray) -> AggregateResult:
        """The round's result: what ``strategy.aggregate(global_vec, updates, state)`` returns."""
        if not self.folds:
            return self.strategy.aggregate(global_vec, self.records(), self.state)
        strategy = self.strategy
        assert isinstance(strategy, WeightedUpdateStrategy)
        records = self.records()
        coeffs, state, diagnostics = strategy.round_coefficients(global_vec, records, self.state)
        pseudo_gradient = self._combine(records, coeffs)
        return strategy.finish(global_vec, records, coeffs, pseudo_gradient, state, diagnostics)

    def _combine(self, records: list[SiteUpdate], coeffs: np.ndarray) -> np.ndarray:
        """``Σ_k a_k Δ_k`` from the sums: solve each group's factors from its updates' a_k."""
        scale = float(np.max(np.abs(coeffs))) if coeffs.size else 0.0
        rows: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            rows.setdefault(self._entries[r.site].group, []).append(i)
        out = np.zeros(self.dim, dtype=np.float64)
        for group, idx in rows.items():
            n_comp = max(len(self._entries[records[i].site].log_weights) for i in idx)
            weights = np.zeros((len(idx), n_comp))
            for row, i in enumerate(idx):
                for j, log_w in enumerate(self._entries[records[i].site].log_weights):
                    if log_w != -math.inf:
                        weights[row, j] = math.exp(log_w - self._sums[(group, j)].top)
            target = coeffs[idx]
            factors = np.linalg.lstsq(weights, target, rcond=None)[0]
            misfit = float(np.max(np.abs(weights @ factors - target)))
            if misfit > FIT_TOLERANCE * max(scale, 1e-300):
                raise ConfigError(
                    f"Strategy '{self.strategy.name}' declared fold terms that do not fit its "
                    f"coefficients in group {group!r} (misfit {misfit:.3g} of {scale:.3g}); "
                    "fix its fold_terms or declare each update its own group."
                )
            for j, factor in enumerate(factors):
                acc = self._sums.get((group, j))
                if acc is not None and factor != 0.0:
                    out += factor * acc.total
        return out.astype(np.float32)
