"""Validation of site updates before they reach a strategy (no I/O; the service wires it).

Every check returns a :class:`Rejection` (a reason from :data:`REASONS` plus a detail naming the
bad value) or passes. Order: cheap header checks first (signature, class, round, duplicate,
privacy plan), then the payload (shape, dtype, NaN/Inf, norm, loss).

The norm bound. A site releases ``Δ̃ = clip_C(Δ) + N(0, s² I_d)``. The clipped part has norm at
most ``C``; the noise norm ``‖z‖`` is a 1-Lipschitz function of a standard Gaussian vector
scaled by ``s``, so by Gaussian concentration ``P(‖z‖ ≥ s(√d + t)) ≤ exp(−t²/2)``
(E‖z‖ ≤ s√d). With ``t = 6`` an honest update is rejected with probability ≤ e^{−18} ≈ 1.5e-8,
so we reject when ``‖Δ̃‖ > C + s(√d + 6)``: a site cannot hide an over-norm update in the noise.
For DP-SGD the clip applies per example and per step: the clipped part of the delta is at most
``lr · C · Σ_t |B_t| / (q n)``; ``Σ_t |B_t| ~ Binomial(T n, q)`` is below ``T q n + 6√(T q n)``
except with negligible probability, so its bound is ``lr C T (1 + 6/√(T q n))``, and the noise
std in the delta is ``lr σ C √T / (q n)`` (the FedProx shrink only lowers both).
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np

from fairfleet.errors import PayloadError
from fairfleet.messages import LocalTrainingPlan, PrivacyPlan, RoundAnnouncement, SiteUpdate
from fairfleet.privacy.kinds import mechanism
from fairfleet.signing import verify

NOISE_TAIL_SIGMAS = 6.0

REASONS = (
    "unknown_site",  # site not in the fleet config
    "bad_signature",  # unsigned, wrong key id, or signature does not verify
    "schema_version",  # a schema version this build does not read (counted from the Reader)
    "schema",  # malformed message (from the Reader)
    "unknown_model",  # an update for a model no aggregator of this fleet serves
    "apply_failed",  # an unexpected error while validating or buffering the update
    "payload",  # payload framing / safetensors / chunk problems
    "wrong_type",  # not a SiteUpdate on the updates topic
    "site_class",  # the class in the message is not the site's configured class
    "late",  # for a round that has closed (also counted in late_updates_total)
    "round_not_open",  # for a round that was never opened (future or unknown)
    "base_version",  # trained from another model version than the round announced
    "duplicate",  # (site, model, round) already accepted
    "site_buffered",  # async: the site already has an update in the current buffer
    "privacy_plan",  # privacy settings weaker than the announced plan
    "budget_spent",  # the accountant's ledger says the site's budget is spent
    "not_in_ledger",  # no committed release of (site, model, round) in privacy.events
    "shape",  # tensor names or shapes differ from the global model
    "dtype",  # tensor dtypes differ from the global model
    "non_finite",  # NaN or Inf in the delta or the loss
    "norm",  # ‖Δ̃‖ above the announced clip bound plus the noise allowance
    "missing_loss",  # the strategy needs the noisy loss release and there is none
    "partition_key",  # several workers: the record's Kafka key is not the update's site
)


@dataclass(frozen=True)
class Rejection:
    reason: str
    detail: str

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"Unknown rejection reason {self.reason!r}; known: {REASONS}.")


def noise_std_for(plan: PrivacyPlan, training: LocalTrainingPlan, n_examples: int) -> float:
    """Per-coordinate noise std the announced plan puts into a site's delta."""
    kind = mechanism(plan.mechanism)
    if not kind.private:
        return 0.0
    if kind.bounds_update:
        return plan.noise_multiplier * plan.clip_norm
    q = plan.sampling_rate or 1.0
    steps = training.epochs * max(1, math.floor(1.0 / q))
    return (
        training.lr * plan.noise_multiplier * plan.clip_norm * math.sqrt(steps) / (q * n_examples)
    )


def norm_bound(plan: PrivacyPlan, training: LocalTrainingPlan, n_examples: int, dim: int) -> float:
    """Largest ‖Δ̃‖ an honest site produces under ``plan`` (module docstring); inf if DP is off."""
    kind = mechanism(plan.mechanism)
    if not kind.private:
        return math.inf
    noise = noise_std_for(plan, training, n_examples) * (math.sqrt(dim) + NOISE_TAIL_SIGMAS)
    if kind.bounds_update:
        return plan.clip_norm + noise
    q = plan.sampling_rate or 1.0
    steps = training.epochs * max(1, math.floor(1.0 / q))
    expected = steps * q * n_examples
    clipped = training.lr * plan.clip_norm * steps * (1.0 + NOISE_TAIL_SIGMAS / math.sqrt(expected))
    return clipped + noise


def check_identity(
    msg: SiteUpdate, public_keys: dict[str, str], site_classes: dict[str, str]
) -> Rejection | None:
    """Known site, valid Ed25519 signature, configured class."""
    problem = verify(msg, public_keys)
    if problem is not None:
        reason = "unknown_site" if problem.startswith("unknown site") else "bad_signature"
        return Rejection(reason, f"Update from site '{msg.site}': {problem}.")
    expected = site_classes.get(msg.site)
    if expected is not None and msg.site_class != expected:
        return Rejection(
            "site_class",
            f"Site '{msg.site}' is configured as class '{expected}'. Found '{msg.site_class}'.",
        )
    return None


def check_round(
    msg: SiteUpdate,
    ann: RoundAnnouncement,
    finished: bool,
    buffered: Collection[tuple[str, int]],
    accepted: Collection[tuple[str, int]],
    max_staleness: int,
    buffered_sites: Collection[str] | None = None,
) -> Rejection | int:
    """Round, version and duplicate checks; the staleness τ when the update may be used.

    Sync: only the open round, trained from its announced version (τ = 0). Async: rounds and
    base versions up to ``max_staleness`` behind, τ = announced version − base version.
    ``buffered``/``accepted`` are the (site, round) ids of the open buffer / the checkpoint;
    ``buffered_sites`` (optional) the sites of ``buffered``, a set for an O(1) check.
    """
    window = max_staleness if ann.mode == "async" else 0
    if finished or msg.round < ann.round - window:
        open_round = "none (finished)" if finished else ann.round
        return Rejection("late", f"Update for round {msg.round}; the open round is {open_round}.")
    if msg.round > ann.round:
        return Rejection("round_not_open", f"Round {msg.round} is not open (open: {ann.round}).")
    staleness = ann.model_version - msg.base_version
    if ann.mode == "sync" and staleness != 0:
        return Rejection(
            "base_version",
            f"Trained from version {msg.base_version}; round "
            f"{ann.round} announced version {ann.model_version}.",
        )
    if not 0 <= staleness <= window:
        return Rejection(
            "base_version",
            f"Base version {msg.base_version} is outside "
            f"[{ann.model_version - window}, {ann.model_version}].",
        )
    key = (msg.site, msg.round)
    if key in buffered or key in accepted:
        return Rejection(
            "duplicate",
            f"Site '{msg.site}' already has an accepted update for "
            f"model '{msg.model_id}' round {msg.round}.",
        )
    sites = buffered_sites if buffered_sites is not None else {site for site, _ in buffered}
    if msg.site in sites:
        return Rejection(
            "site_buffered", f"Site '{msg.site}' already has an update in the current buffer."
        )
    return staleness


def check_privacy(msg: SiteUpdate, plan: PrivacyPlan) -> Rejection | None:
    """The update was privatised at least as strongly as the announced plan asks."""
    got = msg.privacy
    if not mechanism(plan.mechanism).private:
        return None
    tol = 1e-9
    problems = []
    if not got.enabled:
        problems.append("privacy disabled")
    if got.mechanism != plan.mechanism:
        problems.append(f"mechanism {got.mechanism!r} (announced {plan.mechanism!r})")
    if got.noise_multiplier < plan.noise_multiplier - tol:
        problems.append(
            f"noise_multiplier {got.noise_multiplier} < announced {plan.noise_multiplier}"
        )
    if got.clip_norm > plan.clip_norm + tol:
        problems.append(f"clip_norm {got.clip_norm} > announced {plan.clip_norm}")
    if problems:
        return Rejection("privacy_plan", f"Update from '{msg.site}': {'; '.join(problems)}.")
    return None


@dataclass(frozen=True)
class CheckedDelta:
    """A decoded, validated delta as one flat float32 vector."""

    vector: np.ndarray
    norm: float


# safetensors dtype codes -> the dtype names learning.tensors.shapes_of() gives the model's tensors, and the
# numpy dtype a payload's bytes are viewed as (floating parameters only: what build_model makes)
_ST_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
_NP_DTYPES: dict[str, np.dtype[Any]] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
}
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


def safetensors_views(payload: bytes | memoryview) -> dict[str, tuple[str, tuple[int, ...], Any]]:
    """The tensors of a safetensors buffer as ``{name: (dtype name, shape, view)}``, each
    view a zero-copy numpy array over ``payload`` (``None`` for a dtype numpy cannot view).

    Written here instead of ``safetensors.torch.load`` because that copies every tensor out of
    the buffer, and concatenating them copies again: the aggregator reads each update's bytes
    once (fleet-scale profile, docs/aggregator.md "Fleet scale"). The format is the published
    one (8-byte little-endian header length, JSON header, data); malformed input raises
    PayloadError: a header that is not a JSON object of well-formed entries, offsets outside
    the data or not tiling it exactly (as safetensors itself requires), or a byte count that
    does not match dtype x shape.
    """
    view = memoryview(payload).cast("B")
    if len(view) < 8:
        raise PayloadError(f"Not a valid safetensors payload ({len(view)} bytes): too short.")
    n = int.from_bytes(view[:8], "little")
    if n > min(_MAX_HEADER_BYTES, len(view) - 8):
        raise PayloadError(
            f"Not a valid safetensors payload ({len(view)} bytes): header length {n}."
        )
    try:
        header = json.loads(bytes(view[8 : 8 + n]))
    except (UnicodeDecodeError, ValueError) as exc:
        raise PayloadError(f"Not a valid safetensors payload: header is not JSON ({exc}).") from exc
    if not isinstance(header, dict):
        raise PayloadError("Not a valid safetensors payload: the header is not a JSON object.")
    data = view[8 + n :]
    out: dict[str, tuple[str, tuple[int, ...], Any]] = {}
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            code, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            dims = tuple(int(d) for d in shape)
            if (
                not all(isinstance(x, int) for x in (*shape, begin, end))
                or min(dims, default=0) < 0
            ):
                raise TypeError
        except (KeyError, TypeError, ValueError):
            raise PayloadError(
                f"Not a valid safetensors payload: tensor {name!r} has the entry {entry!r}."
            ) from None
        if code not in _ST_DTYPES:
            raise PayloadError(f"Not a valid safetensors payload: tensor {name!r} dtype {code!r}.")
        itemsize = _NP_DTYPES[code].itemsize if code in _NP_DTYPES else None
        count = math.prod(dims)
        if not 0 <= begin <= end <= len(data) or (
            itemsize is not None and end - begin != count * itemsize
        ):
            raise PayloadError(
                f"Not a valid safetensors payload: tensor {name!r} of {code} {list(dims)} has "
                f"data offsets [{begin}, {end}] in {len(data)} data bytes."
            )
        spans.append((begin, end))
        arr = None
        if itemsize is not None:
            arr = np.frombuffer(data, _NP_DTYPES[code], count, begin).reshape(dims)
        out[name] = (_ST_DTYPES[code], dims, arr)
    spans.sort()
    ends = [0, *(end for _, end in spans)]
    if any(begin != ends[i] for i, (begin, _) in enumerate(spans)) or ends[-1] != len(data):
        raise PayloadError(
            "Not a valid safetensors payload: the tensors' data offsets do not tile the "
            f"{len(data)} data bytes."
        )
    return out


def check_payload(
    msg: SiteUpdate,
    payload: bytes | memoryview,
    expected_shapes: dict[str, tuple[tuple[int, ...], str]],
    announcement: RoundAnnouncement,
) -> CheckedDelta | Rejection:
    """Decode the safetensors delta; check names/shapes, dtypes, finiteness and the norm bound.

    One copy and one more read of the update's bytes: the tensors are viewed in place and
    concatenated into the flat float32 vector, whose sum of squares (float64 accumulation,
    numpy's own loop, no BLAS thread pool) is both the norm and the NaN/Inf check (finite
    float32 squares cannot overflow a float64 sum; a NaN or Inf makes it non-finite).
    """
    try:
        delta = safetensors_views(payload)
    except PayloadError as exc:
        return Rejection("payload", str(exc))
    got = {k: (dims, dtype) for k, (dtype, dims, _) in delta.items()}
    if set(got) != set(expected_shapes) or any(
        got[k][0] != expected_shapes[k][0] for k in expected_shapes
    ):
        diff = {
            k: got.get(k, (None,))[0]
            for k in sorted(set(got) | set(expected_shapes))
            if got.get(k, (None,))[0] != expected_shapes.get(k, (None,))[0]
        }
        expected = {k: expected_shapes.get(k, (None,))[0] for k in diff}
        return Rejection(
            "shape", f"Delta from '{msg.site}' has shapes {diff}; the model has {expected}."
        )
    wrong_dtype = {
        k: got[k][1]
        for k in expected_shapes
        if got[k][1] != expected_shapes[k][1] or delta[k][2] is None
    }
    if wrong_dtype:
        return Rejection(
            "dtype",
            f"Delta from '{msg.site}' has dtypes {wrong_dtype}; the model's are "
            f"{ {k: expected_shapes[k][1] for k in wrong_dtype} } (float16/32/64 are read).",
        )
    parts = [delta[k][2].reshape(-1) for k in expected_shapes]
    vector = np.concatenate(parts, dtype=np.float32) if parts else np.zeros(0, np.float32)
    squared = float(np.einsum("i,i->", vector, vector, dtype=np.float64))
    if not math.isfinite(squared):  # name the tensors only when it fails
        bad = [
            k for k, part in zip(expected_shapes, parts, strict=True) if not np.isfinite(part).all()
        ]
        return Rejection("non_finite", f"Delta from '{msg.site}' has NaN/Inf in {bad}.")
    if msg.loss is not None and not math.isfinite(msg.loss.value):
        return Rejection("non_finite", f"Loss release from '{msg.site}' is {msg.loss.value}.")
    norm = math.sqrt(squared)
    bound = norm_bound(announcement.privacy, announcement.training, msg.n_examples, vector.size)
    if norm > bound:
        return Rejection(
            "norm",
            f"‖Δ̃‖ of '{msg.site}' is {norm:.6g}, above the bound {bound:.6g} "
            f"(clip {announcement.privacy.clip_norm} plus the noise allowance for d={vector.size}).",
        )
    return CheckedDelta(vector, norm)
