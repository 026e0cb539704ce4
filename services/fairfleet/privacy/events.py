"""Privacy events: frozen, parameter-only records of every release (STYLE.md 1-3).

The mathematics is dp_accounting's DpEvent algebra — ``GaussianDpEvent(σ)``,
``PoissonSampledDpEvent(q, ·)``, ``SelfComposedDpEvent(·, T)``, ``ComposedDpEvent([...])`` — and
accountants consume those events; events never compute. A :class:`PrivacyRecord` wraps one
DpEvent with what the ledger needs to place it:

* ``unit``: ``observation`` (record-level DP: neighbouring datasets differ in one observation of
  the site) or ``site`` (the whole site's contribution). The two never compose in one ledger.
* ``neighbouring``: ``add_or_remove`` (default; what Poisson-sampled DP-SGD is analysed under) or
  ``replace_one``. One ledger holds one relation.
* ``site``, ``source`` (the site's data source / stream) and the training windows the release
  read: ``windows`` = one inclusive range [first, last] (the hull), and, when the windows are
  not contiguous, ``window_ranges`` = the exact ranges (fairfleet.privacy.windows); the ledger
  composes the release into exactly their union. ``model_id``; ``round``.
* ``event_id``: the idempotency key. Reserving, committing or cancelling the same id twice is a
  no-op.

Serialisation (the ``dp_event`` field of the bus messages in fairfleet.messages) goes through
``DpEvent.to_named_tuple`` as a nested JSON object ``{"class_name": ..., <fields>}``; only event
classes from ``dp_accounting.dp_event`` are read back (a message can never name a module to
import). Compatibility contract: fields are only ever added, optionally; a new mechanism is a new
DpEvent type, never a re-meant parameter.
"""

from __future__ import annotations

import collections
import math
import numbers
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Annotated, Any

from dp_accounting import dp_event
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
    model_validator,
)

from fairfleet.checks import check_positive
from fairfleet.errors import ConfigError, PrivacyError
from fairfleet.privacy.event_bounds import check_dp_event_json
from fairfleet.privacy.windows import WindowRange, WindowRanges, describe, hull, normalise

_DP_EVENT_MODULE = "dp_accounting.dp_event"


class PrivacyUnit(StrEnum):
    """Who is protected: one observation of a site, or a whole site."""

    OBSERVATION = "observation"
    SITE = "site"


class Neighbouring(StrEnum):
    """The neighbouring relation a DpEvent is stated under (dp_accounting NeighboringRelation)."""

    ADD_OR_REMOVE = "add_or_remove"
    REPLACE_ONE = "replace_one"

    def to_dp_accounting(self) -> Any:
        from dp_accounting.privacy_accountant import NeighboringRelation

        if self is Neighbouring.ADD_OR_REMOVE:
            return NeighboringRelation.ADD_OR_REMOVE_ONE
        return NeighboringRelation.REPLACE_ONE


# --------------------------------------------------------------------------- constructors


def check_sampling_rate(q: float) -> None:
    """A ``PoissonSampledDpEvent``'s probability: [0, 1] (q = 0 samples nothing)."""
    if not (math.isfinite(q) and 0.0 <= q <= 1.0):
        raise ConfigError(f"Sampling rate must be in [0, 1]. Found {q}.")


def check_noise_multiplier(sigma: float) -> None:
    """A ``GaussianDpEvent``'s σ: finite and > 0 (no privacy is ``NonPrivateDpEvent``)."""
    check_positive("Noise multiplier", sigma)


def check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ConfigError(f"Steps must be an integer >= 1. Found {steps!r}.")


def validate_sampling_rate(sampling_rate: float | None) -> float:
    """A DP-SGD plan's Poisson rate q: a finite number in (0, 1], never inferred (STYLE.md 9)."""
    if sampling_rate is None:
        raise ConfigError(
            "DP-SGD needs an explicit Poisson sampling rate (sampling_rate); it is never "
            "inferred from the data. Found None."
        )
    if not (isinstance(sampling_rate, int | float) and math.isfinite(sampling_rate)) or not (
        0.0 < float(sampling_rate) <= 1.0
    ):
        raise ConfigError(f"Sampling rate must be in (0, 1]. Found {sampling_rate}.")
    return float(sampling_rate)


def validate_noise_multiplier(noise_multiplier: float) -> float:
    """A plan's σ: finite and >= 0 (σ = 0 is allowed and means *no privacy*, see dpsgd_event)."""
    return check_positive("Noise multiplier", noise_multiplier, allow_zero=True)


def gaussian_event(noise_multiplier: float) -> dp_event.GaussianDpEvent:
    """One Gaussian release with noise std σ·sensitivity."""
    check_noise_multiplier(noise_multiplier)
    return dp_event.GaussianDpEvent(float(noise_multiplier))


def dpsgd_event(sampling_rate: float, noise_multiplier: float, steps: int) -> dp_event.DpEvent:
    """What T DP-SGD steps spend: ``SelfComposed(PoissonSampled(q, Gaussian(σ)), T)``.

    The one builder of this event (site agent, local training, calculator, tests). q must be in
    (0, 1], T an integer >= 1, σ finite and >= 0.

    **σ = 0 means no privacy.** The steps release un-noised gradients, so the event is
    ``NonPrivateDpEvent``: every accountant reports ε = ∞ for it (the ledger denies its
    reservation, the calculator prints ε = ∞ with a warning). It is never an error deep in the
    accounting and never a finite ε.
    """
    q = validate_sampling_rate(sampling_rate)
    sigma = validate_noise_multiplier(noise_multiplier)
    check_steps(steps)
    if sigma == 0:
        return dp_event.NonPrivateDpEvent()
    inner = dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma))
    return dp_event.SelfComposedDpEvent(inner, int(steps))


def compose(events: Sequence[dp_event.DpEvent]) -> dp_event.DpEvent:
    """Sequential composition of ``events`` (adaptive)."""
    if not events:
        return dp_event.NoOpDpEvent()
    if len(events) == 1:
        return events[0]
    return dp_event.ComposedDpEvent(list(events))


def validate_dp_event(event: dp_event.DpEvent) -> dp_event.DpEvent:
    """Reject events whose parameters are out of range, naming the bad value."""
    if isinstance(event, dp_event.GaussianDpEvent):
        check_noise_multiplier(event.noise_multiplier)
    elif isinstance(event, dp_event.PoissonSampledDpEvent):
        check_sampling_rate(event.sampling_probability)
        validate_dp_event(event.event)
    elif isinstance(event, dp_event.SelfComposedDpEvent):
        if isinstance(event.count, bool) or not isinstance(event.count, int) or event.count < 0:
            raise ConfigError(
                f"Self-composition count must be an integer >= 0. Found {event.count!r}."
            )
        validate_dp_event(event.event)
    elif isinstance(event, dp_event.ComposedDpEvent):
        for inner in event.events:
            validate_dp_event(inner)
    elif isinstance(event, dp_event.LaplaceDpEvent):
        check_noise_multiplier(event.noise_multiplier)
    return event


# --------------------------------------------------------------------------- JSON


def dp_event_to_json(event: dp_event.DpEvent) -> dict[str, Any]:
    """``event`` as a JSON-ready dict via ``DpEvent.to_named_tuple`` (module name dropped)."""
    return _tuple_to_json(event.to_named_tuple())


def _tuple_to_json(value: Any) -> Any:
    if hasattr(value, "_fields") and hasattr(value, "class_name"):
        out: dict[str, Any] = {"class_name": value.class_name}
        for name in value._fields:
            if name not in ("module_name", "class_name"):
                out[name] = _tuple_to_json(getattr(value, name))
        return out
    if isinstance(value, list | tuple):
        return [_tuple_to_json(v) for v in value]
    return value


def dp_event_from_json(obj: Mapping[str, Any]) -> dp_event.DpEvent:
    """Inverse of :func:`dp_event_to_json` through ``DpEvent.from_named_tuple``; validated.

    Bounded first (fairfleet.privacy.event_bounds: depth, size, counts, numbers), so nothing
    unbounded reaches the recursive parse or the accounting math.
    """
    check_dp_event_json(obj)
    try:
        event = dp_event.DpEvent.from_named_tuple(_json_to_tuple(obj))
    except PrivacyError:
        raise
    except (TypeError, ValueError, AttributeError) as exc:
        raise PrivacyError(f"Malformed dp_event {dict(obj)!r}: {exc}") from exc
    return validate_dp_event(event)


def _json_to_tuple(value: Any) -> Any:
    if isinstance(value, Mapping):
        class_name = value.get("class_name")
        module = value.get("module_name", _DP_EVENT_MODULE)
        cls = getattr(dp_event, str(class_name), None) if module == _DP_EVENT_MODULE else None
        if not (isinstance(cls, type) and issubclass(cls, dp_event.DpEvent)):
            raise PrivacyError(
                f"Unknown dp_event class {class_name!r} (module {module!r}); "
                f"only {_DP_EVENT_MODULE} events are accepted."
            )
        fields = {
            k: _json_to_tuple(v) for k, v in value.items() if k not in ("class_name", "module_name")
        }
        names = ["module_name", "class_name", *fields]
        wrapper = collections.namedtuple(f"_{class_name}Json", names)  # type: ignore[misc]
        return wrapper(_DP_EVENT_MODULE, class_name, *fields.values())  # type: ignore[call-arg]
    if isinstance(value, list):
        return [_json_to_tuple(v) for v in value]
    return value


def _validate_field(value: Any) -> dp_event.DpEvent:
    if isinstance(value, dp_event.DpEvent):
        return validate_dp_event(value)
    if isinstance(value, Mapping):
        return dp_event_from_json(value)
    raise PrivacyError(
        f"dp_event must be a DpEvent or its JSON object. Found {type(value).__name__}."
    )


DpEventField = Annotated[
    dp_event.DpEvent,
    PlainValidator(_validate_field),
    PlainSerializer(dp_event_to_json, return_type=dict),
    WithJsonSchema(
        {
            "type": "object",
            "required": ["class_name"],
            "properties": {"class_name": {"type": "string"}},
            "additionalProperties": True,
            "description": "dp_accounting DpEvent as JSON (to_named_tuple, nested).",
        }
    ),
]


class LedgerKey(BaseModel):
    """One ledger: privacy unit + site + data source (+ the neighbouring relation it uses)."""

    model_config = ConfigDict(frozen=True)

    unit: PrivacyUnit
    site: str
    source: str

    def __str__(self) -> str:
        return f"{self.unit.value}/{self.site}/{self.source}"


class PrivacyRecord(BaseModel):
    """One release on one ledger: a DpEvent plus where it lands (frozen; JSON-serialisable)."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    event_id: Annotated[str, Field(min_length=1)]
    unit: PrivacyUnit
    site: Annotated[str, Field(min_length=1)]
    source: Annotated[str, Field(min_length=1)]
    windows: WindowRange
    model_id: str = ""
    round: Annotated[int, Field(ge=0)] = 0
    site_class: str = ""
    neighbouring: Neighbouring = Neighbouring.ADD_OR_REMOVE
    dp_event: DpEventField
    window_ranges: WindowRanges = ()

    @model_validator(mode="after")
    def _check_windows(self) -> PrivacyRecord:
        self.windows.ordered()
        if not self.window_ranges:
            return self
        exact = normalise(self.window_ranges)
        if hull(exact) != self.windows:
            raise ValueError(
                f"windows {self.windows} must be the hull of window_ranges {describe(exact)}."
            )
        # canonical: one contiguous range is stated by ``windows`` alone
        object.__setattr__(self, "window_ranges", () if exact == (self.windows,) else exact)
        return self

    @property
    def charged(self) -> WindowRanges:
        """The windows this release composes into: ``window_ranges``, or the one ``windows``."""
        return self.window_ranges or (self.windows,)

    @property
    def key(self) -> LedgerKey:
        return LedgerKey(unit=self.unit, site=self.site, source=self.source)

    def message_fields(self) -> dict[str, Any]:
        """The fields of fairfleet.messages' privacy request/event messages, JSON-ready."""
        return self.model_dump(mode="json")
