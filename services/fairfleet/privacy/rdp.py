"""Rényi DP of the Poisson-subsampled Gaussian, vectorised over events × orders (pure functions).

For sampling rate q, noise multiplier σ and order α (Mironov, Talwar & Zhang 2019, §3.3,
arXiv:1908.10530), the RDP of one step is ``ε(α) = log A_α / (α − 1)`` with

* integer α:  ``A_α = Σ_{i=0..α} C(α, i) q^i (1−q)^{α−i} exp((i² − i) / (2σ²))``;
* fractional α: ``A_α = A₀ + A₁``, two series over i = 0, 1, ... of
  ``C(α, i) q^i (1−q)^{α−i} exp((i² − i)/(2σ²)) · ½ erfc((i − z₀)/(√2 σ))`` and the mirror term
  with j = α − i, z₀ = σ² log(1/q − 1) + ½, summed with the signed binomial coefficients (as
  opacus does) until both terms are decreasing and below e^{−30} × the running total;
* q = 1 (plain Gaussian): ``ε(α) = α / (2σ²)``; q = 0: 0; σ = 0: ∞.

RDP adds under composition, and (ε, δ) follows from the conversion of Balle et al. 2020
(arXiv:1905.09982, Thm 21): ``ε = min_α  rdp(α) − (log δ + log α)/(α − 1) + log((α − 1)/α)``.

These are the formulas of opacus ``accountants/analysis/rdp.py`` (itself TF Privacy's), evaluated
with the same orders, so the ε values agree to rounding (< 1e-9 relative in our tests). One
difference: opacus stops the fractional series at the first i where both terms are below e^{−30}
in absolute terms, which at large fractional orders cuts it after the first term (q = 0.4,
σ = 12, α ≥ 58.8: log A < 0, a negative RDP); we stop as dp-accounting does, relative to the
running total and only once the terms decrease. Every log A is checked (A ≥ 1 exactly): one that
is not trustworthy drops its order, with a warning, instead of passing for a small RDP.

Why not call opacus: it loops in Python over every order and every series term of every event
(≈ 11 ms per distinct (q, σ)); here one numpy pass handles a whole batch of events, and
:class:`RdpCurveCache` computes each distinct (q, σ) once.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence

import numpy as np
from scipy import special

# opacus RDPAccountant.DEFAULT_ALPHAS, the same expression (hence the same floats).
DEFAULT_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
)

_STOP_LOG = -30.0  # a series stops at terms below e^-30 x its running total
_MAX_TERMS = 100_000  # a fractional-order series not converged by then: the order is dropped
_ROUNDING = 1e-12  # |log A| below this is rounding (A ≥ 1 exactly): read as log A = 0
_log = logging.getLogger(__name__)
_CHUNK = 512  # events per numpy block (bounds memory at ≈ 512 × 64 × orders floats)
_FRAC_CHUNK = 1024  # events per fractional-order batch (the sparse tail has Python overhead)


def _log_sub(log_x: np.ndarray, log_y: np.ndarray) -> np.ndarray:
    """log(e^x − e^y) elementwise for x ≥ y (−inf where equal)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = log_y - log_x
        out = log_x + np.log(-np.expm1(diff))
    out = np.where(np.isneginf(log_y), log_x, out)
    return np.where(log_x == log_y, -np.inf, out)


def _log_a_int(q: np.ndarray, sigma: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """log A_α for integer orders: (n,) × (k,) → (n, k), a masked logsumexp over i = 0..α.

    Orders are processed in buckets (α ≤ 15, ≤ 31, ≤ 63, ...) so the masked-out part of the
    i axis stays small.
    """
    out = np.empty((len(q), len(alphas)))
    log_q = np.log(q)[:, None, None]
    log_1mq = np.log1p(-q)[:, None, None]
    inv_2s2 = (0.5 / sigma**2)[:, None, None]
    low = 0.0
    for high in (15.0, 31.0, 63.0, np.inf):
        cols = np.flatnonzero((alphas > low) & (alphas <= high))
        low = high
        if not len(cols):
            continue
        a = alphas[cols][:, None]  # (k', 1)
        i = np.arange(int(a.max()) + 1, dtype=np.float64)[None, :]  # (1, m)
        valid = i <= a
        log_binom = np.where(
            valid,
            special.gammaln(a + 1)
            - special.gammaln(i + 1)
            - special.gammaln(np.where(valid, a - i, 0) + 1),
            -np.inf,
        )  # (k', m)
        terms = (
            log_binom[None]
            + i[None] * log_q
            + (a - i)[None] * log_1mq
            + (i * i - i)[None] * inv_2s2
        )
        terms = np.where(valid[None], terms, -np.inf)
        peak = terms.max(axis=2, keepdims=True)  # finite: the i = 0 term always is
        out[:, cols] = np.log(np.exp(terms - peak).sum(axis=2)) + peak[..., 0]
    return out


# Terms per block for the fractional-order series: most cells stop after 10-20 terms, a few
# (α near 1, small σ, large q) run to thousands; this schedule measured the least overshoot.
_DENSE = 12  # terms every cell gets in the dense first phase
_BLOCKS = (8, 8, 16, 32, 64, 128)  # then blocks of i for the cells still running


def _accumulate(
    sums: np.ndarray,
    last: np.ndarray,
    cells: np.ndarray,
    log_s0: np.ndarray,
    log_s1: np.ndarray,
    positive: np.ndarray,
) -> np.ndarray:
    """Add each cell's terms up to and including its first stopping term; return who stopped.

    ``log_s0``/``log_s1``/``positive`` are (cells, B); ``sums`` (4, all cells) holds the running
    log-sums of positive and negative terms of A0 and A1; ``last`` (2, all cells) the previous
    log s0 and log s1 of each cell (updated here).

    A cell stops at the first term where both s0 and s1 are decreasing and below e^{−30} times
    the running total Σ|terms| — dp-accounting's rule (here against a lower bound of that total). opacus's absolute rule (both terms below
    e^{−30}) stops at i = 0 when the mass of the series lies at larger i: for q = 0.4, σ = 12,
    α = 58.9 the first term is (1 − q)^α ≈ e^{−30.1}, the series is cut after one term and
    log A comes out negative (A ≥ 1 always: a Rényi divergence is ≥ 0).
    """
    block = log_s0.shape[1]
    stop = np.empty(log_s0.shape, dtype=bool)  # both terms decreasing ...
    stop[:, 0] = (log_s0[:, 0] < last[0, cells]) & (log_s1[:, 0] < last[1, cells])
    np.less(log_s0[:, 1:], log_s0[:, :-1], out=stop[:, 1:])
    stop[:, 1:] &= log_s1[:, 1:] < log_s1[:, :-1]
    # ... and below e^{-30} x a lower bound on the running total Σ|terms| (the total before this
    # block, or the largest term so far): a little stricter than dp-accounting's exact running
    # total, and much cheaper.
    largest = np.maximum(log_s0, log_s1)
    reference = np.maximum.accumulate(largest, axis=1)
    np.maximum(reference, sums[:, cells].max(axis=0)[:, None], out=reference)
    stop &= largest < reference + _STOP_LOG
    stopped = np.asarray(stop.any(axis=1))
    first_stop = np.where(stopped, stop.argmax(axis=1), block)
    take = np.arange(block)[None, :] <= first_stop[:, None]
    for slot, term in ((0, log_s0), (2, log_s1)):
        term = np.where(take, term, -np.inf)
        peak = term.max(axis=1, keepdims=True)
        peak = np.where(np.isfinite(peak), peak, 0.0)
        scaled = np.exp(term - peak)
        with np.errstate(divide="ignore"):
            log_pos = np.log(np.where(positive, scaled, 0.0).sum(axis=1)) + peak[:, 0]
            log_neg = np.log(np.where(positive, 0.0, scaled).sum(axis=1)) + peak[:, 0]
        sums[slot, cells] = np.logaddexp(sums[slot, cells], log_pos)
        sums[slot + 1, cells] = np.logaddexp(sums[slot + 1, cells], log_neg)
    last[0, cells] = log_s0[:, -1]
    last[1, cells] = log_s1[:, -1]
    return stopped


def _log_a_frac(q: np.ndarray, sigma: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """log A_α for fractional orders, opacus's term-by-term loop run for all cells at once.

    Each (event, order) cell adds terms i = 0, 1, ... up to and including its stopping term
    (see :func:`_accumulate`); a cell still running after ``_MAX_TERMS`` terms gets NaN. Terms are evaluated for blocks of i
    at once over all unfinished cells; finished cells leave the arrays, so the cost is the
    total series length, with no Python work per term. With j = α − i:

        log s0 = log|C(α,i)| + α log(1−q) + i log(q/(1−q)) + (i² − i)/(2σ²) + log Φ((z₀ − i)/σ)
        log s1 = log|C(α,i)| + α log q    − i log(q/(1−q)) + (j² − j)/(2σ²) + log Φ((j − z₀)/σ)

    (½ erfc(x/√2) = Φ(−x), so opacus's ``log ½ + log erfc`` is ``log_ndtr`` directly.) log Φ
    dominates the cost; its first argument does not depend on α and its second only through
    α − i, which takes few distinct values on a grid of orders, so both are tabulated per event
    and gathered.
    """
    n, k = len(q), len(alphas)
    log_q, log_1mq = np.log(q), np.log1p(-q)
    log_ratio = log_q - log_1mq
    inv_2s2, inv_s = 0.5 / sigma**2, 1.0 / sigma
    z0 = sigma**2 * np.log(1 / q - 1) + 0.5
    # running log-sums of the positive and negative terms: A0+, A0−, A1+, A1−
    sums = np.full((4, n * k), -np.inf)
    last = np.full((2, n * k), -np.inf)  # the previous log s0, log s1 of each cell
    # Phase 1: the first _DENSE terms of every cell, as dense (event, order, i) arrays built by
    # broadcasting (no gathers); most cells finish here.
    i = np.arange(_DENSE, dtype=np.float64)
    coef_table = special.binom(alphas[:, None], i[None, :])  # (k, B)
    with np.errstate(divide="ignore"):
        log_coef = np.log(np.abs(coef_table))[None]  # (1, k, B)
    j_table = alphas[:, None] - i[None, :]
    j_values, j_index = np.unique(j_table, return_inverse=True)
    ndtr0 = special.log_ndtr((z0[:, None] - i[None, :]) * inv_s[:, None])  # (n, B)
    ndtr1 = special.log_ndtr((j_values[None, :] - z0[:, None]) * inv_s[:, None])  # (n, U)
    ratio_i = log_ratio[:, None] * i[None, :]  # (n, B)
    log_s0 = (
        log_coef
        + (alphas[None, :] * log_1mq[:, None])[:, :, None]
        + (ratio_i + (i * i - i)[None, :] * inv_2s2[:, None] + ndtr0)[:, None, :]
    )
    log_s1 = (
        log_coef
        + (alphas[None, :] * log_q[:, None])[:, :, None]
        - ratio_i[:, None, :]
        + (j_table * j_table - j_table)[None] * inv_2s2[:, None, None]
        + ndtr1[:, j_index.reshape(j_table.shape)]
    )
    done = _accumulate(
        sums,
        last,
        np.arange(n * k),
        log_s0.reshape(n * k, -1),
        log_s1.reshape(n * k, -1),
        np.broadcast_to(coef_table > 0, (n, k, _DENSE)).reshape(n * k, -1),
    )
    # Phase 2: the remaining cells, gathered, in growing blocks of i.
    cells = np.flatnonzero(~done)
    start = _DENSE
    for step in itertools.count():
        if not len(cells):
            break
        if start >= _MAX_TERMS:  # not converged: no trustworthy value (dropped by the caller)
            sums[:, cells] = np.nan
            break
        block = _BLOCKS[min(step, len(_BLOCKS) - 1)]
        i = np.arange(start, start + block, dtype=np.float64)  # (B,)
        ev, order = np.divmod(cells, k)
        events, ev_local = np.unique(ev, return_inverse=True)
        orders, order_local = np.unique(order, return_inverse=True)
        a = alphas[orders]
        coef_table = special.binom(a[:, None], i[None, :])  # (k', B)
        with np.errstate(divide="ignore"):
            log_coef = np.log(np.abs(coef_table))[order_local]  # (c, B)
        positive = coef_table[order_local] > 0
        j_table = a[:, None] - i[None, :]  # (k', B)
        j_values, j_index = np.unique(j_table, return_inverse=True)
        j_index = j_index.reshape(j_table.shape)
        e_inv_s = inv_s[events, None]
        ndtr0 = special.log_ndtr((z0[events, None] - i[None, :]) * e_inv_s)  # (E, B)
        ndtr1 = special.log_ndtr((j_values[None, :] - z0[events, None]) * e_inv_s)  # (E, U)
        c_ratio = log_ratio[ev, None] * i[None, :]
        c_inv_2s2 = inv_2s2[ev, None]
        j = j_table[order_local]
        log_s0 = (
            log_coef
            + (alphas[order] * log_1mq[ev])[:, None]
            + c_ratio
            + (i * i - i)[None, :] * c_inv_2s2
            + ndtr0[ev_local]
        )
        log_s1 = (
            log_coef
            + (alphas[order] * log_q[ev])[:, None]
            - c_ratio
            + (j * j - j) * c_inv_2s2
            + ndtr1[ev_local[:, None], j_index[order_local]]
        )
        stopped = _accumulate(sums, last, cells, log_s0, log_s1, positive)
        cells = cells[~stopped]
        start += block
    # A = (A0+ − A0−) + (A1+ − A1−). A part whose negative sum exceeds its positive sum by no
    # more than rounding of the whole series (at huge σ, A1 is ~1e-20 of A) is 0; by more, it
    # stays NaN (not trustworthy; the caller drops the order).
    with np.errstate(invalid="ignore", over="ignore"):
        magnitude = np.logaddexp.reduce(sums, axis=0)  # log Σ|terms|
        parts = []
        for positive_sum, negative_sum in ((sums[0], sums[1]), (sums[2], sums[3])):
            part = _log_sub(positive_sum, negative_sum)
            excess = np.exp(negative_sum - magnitude) - np.exp(positive_sum - magnitude)
            parts.append(np.where(np.isnan(part) & (excess <= _ROUNDING), -np.inf, part))
        log_a = np.logaddexp(parts[0], parts[1])
    return log_a.reshape(n, k)


def _checked(log_a: np.ndarray, q: np.ndarray, sigma: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """``log_a`` (events, orders) made honest: A ≥ 1 exactly (a Rényi divergence is ≥ 0), so
    a value below 0 by no more than rounding is read as 0; a value clearly below 0, or none
    (a series that did not converge), is not trustworthy: that order becomes +∞ — it drops out
    of the minimum over orders, so ε only gets looser — and a warning names it.
    """
    bad = np.isnan(log_a) | (log_a < -_ROUNDING)
    if bad.any():
        rows, cols = np.nonzero(bad)
        _log.warning(
            "RDP of the Poisson-subsampled Gaussian has no trustworthy value at %d (q, σ, order) "
            "cell(s), e.g. q=%r, σ=%r, order %r (log A = %r); those orders are dropped from "
            "the ε conversion.",
            len(rows),
            float(q[rows[0]]),
            float(sigma[rows[0]]),
            float(alphas[cols[0]]),
            float(log_a[rows[0], cols[0]]),
        )
    return np.where(bad, np.inf, np.maximum(log_a, 0.0))


def rdp_subsampled_gaussian(
    sampling_rates: Sequence[float] | np.ndarray,
    noise_multipliers: Sequence[float] | np.ndarray,
    orders: Sequence[float] | np.ndarray = DEFAULT_ORDERS,
) -> np.ndarray:
    """RDP of ONE step of each (q_e, σ_e) at every order: an (events, orders) array."""
    q = np.asarray(sampling_rates, dtype=np.float64).reshape(-1)
    sigma = np.asarray(noise_multipliers, dtype=np.float64).reshape(-1)
    alphas = np.asarray(orders, dtype=np.float64).reshape(-1)
    if q.shape != sigma.shape:
        raise ValueError(
            f"Need one noise multiplier per sampling rate. Found {q.shape} vs {sigma.shape}."
        )
    out = np.zeros((len(q), len(alphas)))
    gaussian = q == 1.0
    out[gaussian] = alphas[None, :] / (2 * sigma[gaussian, None] ** 2)
    out[(sigma == 0) & (q > 0)] = np.inf
    general = np.flatnonzero((q > 0) & (q < 1) & (sigma > 0))
    is_int = np.array([float(a).is_integer() for a in alphas], dtype=bool)
    int_cols, frac_cols = np.flatnonzero(is_int), np.flatnonzero(~is_int & np.isfinite(alphas))
    out[np.ix_(general, np.flatnonzero(np.isinf(alphas)))] = np.inf
    for cols, chunk, log_a_of in (
        (int_cols, _CHUNK, _log_a_int),
        (frac_cols, _FRAC_CHUNK, _log_a_frac),
    ):
        if not len(cols):
            continue
        for start in range(0, len(general), chunk):
            rows = general[start : start + chunk]
            cells = (q[rows], sigma[rows], alphas[cols])
            out[np.ix_(rows, cols)] = _checked(log_a_of(*cells), *cells) / (alphas[cols] - 1)
    return out


def epsilon_from_rdp(
    rdp: np.ndarray, orders: Sequence[float] | np.ndarray, delta: float
) -> tuple[np.ndarray, np.ndarray]:
    """(ε, optimal order) for each row of ``rdp`` (…, orders) at ``delta`` (Balle et al. Thm 21).

    ε is clamped at 0 (opacus #844): (ε, δ)-DP with ε < 0 implies (0, δ)-DP, so this is sound.
    It never hides a negative RDP: ``rdp_subsampled_gaussian`` returns none (an untrustworthy
    order is +∞, dropped from the minimum, with a warning). Orders that are +∞ take no part;
    rows that are infinite at every order give (∞, nan).
    """
    alphas = np.asarray(orders, dtype=np.float64)
    rdp = np.atleast_2d(np.asarray(rdp, dtype=np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        eps = (
            rdp - (math.log(delta) + np.log(alphas)) / (alphas - 1) + np.log((alphas - 1) / alphas)
        )
    eps = np.where(np.isnan(eps), np.inf, eps)
    eps = np.where((rdp == 0).all(axis=-1, keepdims=True), 0.0, eps)  # nothing composed: ε = 0
    best = np.argmin(eps, axis=-1)
    value = np.take_along_axis(eps, best[..., None], axis=-1)[..., 0]
    order = np.where(np.isfinite(value), alphas[best], np.nan)
    return np.maximum(value, 0.0), order


class RdpCurveCache:
    """Per-step RDP curves keyed by (q, σ): each distinct pair is computed once, in batches."""

    def __init__(self, orders: Sequence[float] = DEFAULT_ORDERS) -> None:
        self.orders = np.asarray(orders, dtype=np.float64)
        self._curves: dict[tuple[float, float], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._curves)

    def curves(self, pairs: Sequence[tuple[float, float]]) -> np.ndarray:
        """(len(pairs), orders) array of per-step RDP; computes missing pairs in one batch."""
        missing = list(dict.fromkeys(p for p in pairs if p not in self._curves))
        if missing:
            fresh = rdp_subsampled_gaussian(
                [p[0] for p in missing], [p[1] for p in missing], self.orders
            )
            fresh.setflags(write=False)
            for pair, row in zip(missing, fresh, strict=True):
                self._curves[pair] = row
        if not pairs:
            return np.zeros((0, len(self.orders)))
        return np.stack([self._curves[p] for p in pairs])

    def curve(self, q: float, sigma: float) -> np.ndarray:
        return self.curves([(q, sigma)])[0]
