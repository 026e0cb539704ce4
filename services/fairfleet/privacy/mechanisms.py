"""Noise mechanisms applied at the site, before anything leaves it (pure math, no I/O).

Two releases are privatised here:

* :class:`GaussianUpdateMechanism` — the update-level Gaussian mechanism. A flat update vector
  u is clipped to L2 norm C, ``ū = u · min(1, C / ‖u‖₂)``, and released as ``ū + N(0, σ²C² I)``.
  Adding or removing one whole site changes the released sum by at most C, so one release is
  the Gaussian mechanism with noise multiplier σ (``GaussianDpEvent(σ)``) at the *site* unit.
  It composes per release; there is no sampling amplification (the site cannot verify the
  server's sampling).

* :func:`noisy_bounded_mean` — the held-out loss statistic the fairness strategies need.
  Values are clipped to [lo, hi] and released as ``lo + Σ(clip(v) − lo)/m + N(0, (σ(hi−lo)/m)²)``
  with m the *public* divisor (the configured held-out size). Adding, removing or replacing one
  observation moves the sum by at most (hi − lo), so the release is ``GaussianDpEvent(σ)`` at the
  observation unit under both add/remove and replace-one; at the site unit (the whole held-out
  set may change) the sensitivity is (hi − lo), i.e. ``GaussianDpEvent(σ / m)``.

Secure noise (``secure=True``): every call seeds a fresh ``torch.Generator`` from
``secrets.randbits`` (the OS CSPRNG, as opacus ``secure_mode`` does through ``/dev/urandom``) and
draws the noise as the sum of four N(0, s²) samples divided by 2 after discarding one draw — the
floating-point-attack mitigation of Holohan & Braghin 2021 (§5.1, n=2) used by opacus
``_generate_noise``. Reseeding per call keeps an attacker from ever seeing a long Mersenne-Twister
stream. We do not call opacus's private ``_generate_noise`` because its name is not a public API.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import numpy as np
import torch
from dp_accounting import dp_event

from fairfleet.checks import check_positive
from fairfleet.errors import ConfigError, PrivacyError
from fairfleet.privacy.events import PrivacyUnit


def secure_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh torch generator seeded from the OS CSPRNG (``secrets.randbits(63)``)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(secrets.randbits(63))
    return generator


def gaussian_noise(
    std: float,
    shape: torch.Size | tuple[int, ...],
    generator: torch.Generator | None = None,
    secure: bool = False,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """N(0, std² I) of ``shape``; with ``secure`` the 4-sample construction described above."""
    if std == 0:
        return torch.zeros(shape, dtype=dtype)
    if not secure:
        return torch.normal(0.0, std, size=tuple(shape), generator=generator).to(dtype)
    gen = generator if generator is not None else secure_generator()
    torch.normal(0.0, std, size=(1,), generator=gen)  # discard one draw, as opacus does
    total = torch.zeros(shape, dtype=torch.float64)
    for _ in range(4):
        total += torch.normal(0.0, std, size=tuple(shape), generator=gen, dtype=torch.float64)
    return (total / 2).to(dtype)


@dataclass(frozen=True)
class PrivatisedUpdate:
    """A clipped and noised update ready to leave the site.

    ``norm_before`` is ‖u‖₂ before clipping (for metrics only: it never leaves the site),
    ``clipped`` says whether ‖u‖₂ > C, ``noise_std`` is the per-coordinate std σ·C.
    """

    values: torch.Tensor
    norm_before: float
    clipped: bool
    noise_std: float


@dataclass(frozen=True)
class GaussianUpdateMechanism:
    """Clip a flat update to L2 norm C and add N(0, σ²C² I): ``GaussianDpEvent(σ)``, site unit."""

    clip_norm: float
    noise_multiplier: float
    secure: bool = False

    def __post_init__(self) -> None:
        check_positive("Clip norm", self.clip_norm)
        check_positive("Noise multiplier", self.noise_multiplier, allow_zero=True)

    @property
    def noise_std(self) -> float:
        """Per-coordinate noise standard deviation σ·C."""
        return self.noise_multiplier * self.clip_norm

    def privatise(
        self, update: torch.Tensor, generator: torch.Generator | None = None
    ) -> PrivatisedUpdate:
        """Return ``clip(update) + noise``; ``update`` must be a flat finite float tensor."""
        if update.dim() != 1:
            raise PrivacyError(f"Update must be a flat vector. Found shape {tuple(update.shape)}.")
        if not torch.is_floating_point(update):
            raise PrivacyError(f"Update must be a float tensor. Found dtype {update.dtype}.")
        if not bool(torch.isfinite(update).all()):
            bad = int((~torch.isfinite(update)).sum())
            raise PrivacyError(f"Update must be finite. Found {bad} NaN/Inf coordinates.")
        values = update.detach().to(torch.float32)
        norm = float(torch.linalg.vector_norm(values.double()))
        clipped = norm > self.clip_norm
        if clipped:
            values = values * (self.clip_norm / norm)
        noise = gaussian_noise(
            self.noise_std, values.shape, generator=generator, secure=self.secure
        )
        return PrivatisedUpdate(
            values=values + noise, norm_before=norm, clipped=clipped, noise_std=self.noise_std
        )

    def dp_event(self) -> dp_event.DpEvent:
        """One release: ``GaussianDpEvent(σ)`` (sensitivity C, std σC), site unit."""
        if self.noise_multiplier == 0:
            return dp_event.NonPrivateDpEvent()
        return dp_event.GaussianDpEvent(self.noise_multiplier)


@dataclass(frozen=True)
class NoisyMean:
    """A released noisy bounded mean: ``value`` with noise std σ(hi−lo)/m over m values."""

    value: float
    noise_std: float
    m: int
    lo: float
    hi: float
    noise_multiplier: float

    def dp_event(self, unit: PrivacyUnit | str = PrivacyUnit.OBSERVATION) -> dp_event.DpEvent:
        """The release as a DpEvent for the given privacy unit.

        Observation unit: sensitivity (hi−lo)/m, std σ(hi−lo)/m → ``GaussianDpEvent(σ)``.
        Site unit: sensitivity (hi−lo), same std → ``GaussianDpEvent(σ/m)``.
        """
        return noisy_mean_dp_event(self.noise_multiplier, self.m, unit)


def noisy_mean_dp_event(
    noise_multiplier: float, m: int, unit: PrivacyUnit | str = PrivacyUnit.OBSERVATION
) -> dp_event.DpEvent:
    """The DpEvent of :func:`noisy_bounded_mean` with parameters (σ, m) at ``unit``."""
    unit = PrivacyUnit(unit)
    if noise_multiplier == 0:
        return dp_event.NonPrivateDpEvent()
    if unit is PrivacyUnit.OBSERVATION:
        return dp_event.GaussianDpEvent(noise_multiplier)
    return dp_event.GaussianDpEvent(noise_multiplier / m)


def noisy_bounded_mean(
    values: np.ndarray | torch.Tensor,
    lo: float,
    hi: float,
    noise_multiplier: float,
    generator: np.random.Generator | None = None,
    m: int | None = None,
) -> NoisyMean:
    """Release ``lo + Σ(clip(v, lo, hi) − lo)/m + N(0, (σ(hi−lo)/m)²)``.

    ``m`` is the public divisor (default ``len(values)``; it must not depend on private data
    beyond the configured held-out size). ``generator`` defaults to a numpy generator seeded from
    the OS CSPRNG.
    """
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ConfigError(f"Bounds must be finite with hi > lo. Found lo={lo}, hi={hi}.")
    check_positive("Noise multiplier", noise_multiplier, allow_zero=True)
    array = (
        values.detach().cpu().double().numpy()
        if isinstance(values, torch.Tensor)
        else np.asarray(values, dtype=np.float64)
    ).reshape(-1)
    divisor = len(array) if m is None else m
    if divisor < 1:
        raise PrivacyError(f"A noisy mean needs m >= 1 values. Found m={divisor}.")
    if len(array) > divisor:
        raise PrivacyError(
            f"More values than the public divisor m. Found {len(array)} > {divisor}."
        )
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise PrivacyError(f"Values must be finite. Found {bad} NaN/Inf.")
    rng = generator if generator is not None else np.random.default_rng(secrets.randbits(128))
    clipped_sum = float(np.sum(np.clip(array, lo, hi) - lo))
    std = noise_multiplier * (hi - lo) / divisor
    noise = float(rng.normal(0.0, std)) if std > 0 else 0.0
    return NoisyMean(
        value=lo + clipped_sum / divisor + noise,
        noise_std=std,
        m=divisor,
        lo=lo,
        hi=hi,
        noise_multiplier=noise_multiplier,
    )
