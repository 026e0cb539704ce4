"""Reduce a DpEvent to counted Gaussian leaves: the common input of both accountants.

Every event the platform emits is built from Poisson-subsampled Gaussians (DP-SGD steps; q = 1
is the plain Gaussian of the update-level mechanism and of the noisy statistics), composed
sequentially. Composition is commutative for both RDP (sums) and PLD (convolution), so an event
is fully described, for accounting, by a multiset {(q, σ): count}. Reducing to that multiset is
what lets the accountants merge identical events (PLD) and cache curves by (q, σ) (RDP).

Extension follows STYLE.md 6: a small registry mapping a DpEvent class to a reducer, instead of
an isinstance chain; ``register_reducer`` adds a mechanism without touching the accountants.
An event the registry cannot reduce yields :class:`Unsupported` naming the offending sub-event
(the dry-run of dp_accounting's ``supports``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from dp_accounting import dp_event

from fairfleet.errors import UnsupportedEventError
from fairfleet.privacy.events import Neighbouring


@dataclass(frozen=True, order=True)
class GaussianLeaf:
    """One step of the Poisson-subsampled Gaussian (q = 1: the plain Gaussian mechanism).

    σ = 0 (or a ``NonPrivateDpEvent``) is an unbounded release: ε = ∞.
    """

    sampling_rate: float
    noise_multiplier: float

    @property
    def non_private(self) -> bool:
        return self.noise_multiplier == 0 and self.sampling_rate > 0


NON_PRIVATE = GaussianLeaf(1.0, 0.0)


@dataclass(frozen=True)
class Unsupported:
    """Why an event cannot be accounted: the offending sub-event and the reason."""

    event: dp_event.DpEvent
    reason: str

    def __str__(self) -> str:
        return f"{self.reason} (sub-event {self.event})"

    def error(self, top: dp_event.DpEvent) -> UnsupportedEventError:
        """The one-line typed error for accounting ``top``, which contains this sub-event."""
        name = type(self.event).__name__
        inside = "" if self.event is top else f" (inside {type(top).__name__})"
        supported = ", ".join(sorted(cls.__name__ for cls in _REDUCERS))
        return UnsupportedEventError(
            name,
            f"Cannot account {name}{inside}: {self.reason}. Accountable events: {supported}.",
        )


Leaves = Counter[GaussianLeaf]
# A reducer yields (leaf, count) pairs, or an Unsupported, for `event` composed `count` times.
Reducer = Callable[
    [dp_event.DpEvent, int, Neighbouring], Iterator["tuple[GaussianLeaf, int] | Unsupported"]
]
_REDUCERS: dict[type[dp_event.DpEvent], Reducer] = {}
E = TypeVar("E", bound=type[dp_event.DpEvent])


def register_reducer(event_type: type[dp_event.DpEvent]) -> Callable[[Reducer], Reducer]:
    """Decorator: register how ``event_type`` reduces to Gaussian leaves."""

    def wrap(fn: Reducer) -> Reducer:
        _REDUCERS[event_type] = fn
        return fn

    return wrap


def _walk(
    event: dp_event.DpEvent, count: int, relation: Neighbouring
) -> Iterator[tuple[GaussianLeaf, int] | Unsupported]:
    reducer = _REDUCERS.get(type(event))
    if reducer is None:
        yield Unsupported(event, "no accountant rule for this event type")
        return
    yield from reducer(event, count, relation)


@register_reducer(dp_event.NoOpDpEvent)
def _noop(
    event: dp_event.DpEvent, count: int, relation: Neighbouring
) -> Iterator[tuple[GaussianLeaf, int] | Unsupported]:
    return iter(())


@register_reducer(dp_event.NonPrivateDpEvent)
def _non_private(
    event: dp_event.DpEvent, count: int, relation: Neighbouring
) -> Iterator[tuple[GaussianLeaf, int] | Unsupported]:
    if count:
        yield NON_PRIVATE, 1


@register_reducer(dp_event.GaussianDpEvent)
def _gaussian(
    event: dp_event.DpEvent, count: int, relation: Neighbouring
) -> Iterator[tuple[GaussianLeaf, int] | Unsupported]:
    assert isinstance(event, dp_event.GaussianDpEvent)
    if count:
        yield GaussianLeaf(1.0, float(event.noise_multiplier)), count


@register_reducer(dp_event.PoissonSampledDpEvent)
def _poisson(
    event: dp_event.DpEvent, count: int, relation: Neighbouring
) -> Iterator[tuple[GaussianLeaf, int] | Unsupported]:
    assert isinstance(event, dp_event.PoissonSampledDpEvent)
    inner = event.event
    if isinstance(inner, dp_event.NoOpDpEvent) or event.sampling_probability == 0:
        return
    if not isinstance(inner, dp_event.GaussianDpEvent):
        yield Unsupported(
            event,
            f"Poisson sampling is accounted around a GaussianDpEvent only, not around a "
            f"{type(inner).__name__}",
        )
        return
    if relation is not Neighbouring.ADD_OR_REMOVE and event.sampling_probability < 1:
        yield Unsupported(event, "Poisson-subsampled Gaussian is accounted under add/remove only")
        return
    if count:
        yield GaussianLeaf(float(event.sampling_probability), float(inner.noise_multiplier)), count


@register_reducer(dp_event.SelfComposedDpEvent)
def _self_composed(
    event: dp_event.DpEvent, count: int, relation: Neighbouring
) -> Iterator[tuple[GaussianLeaf, int] | Unsupported]:
    assert isinstance(event, dp_event.SelfComposedDpEvent)
    yield from _walk(event.event, count * event.count, relation)


@register_reducer(dp_event.ComposedDpEvent)
def _composed(
    event: dp_event.DpEvent, count: int, relation: Neighbouring
) -> Iterator[tuple[GaussianLeaf, int] | Unsupported]:
    assert isinstance(event, dp_event.ComposedDpEvent)
    for inner in event.events:
        yield from _walk(inner, count, relation)


def reduce_event(
    event: dp_event.DpEvent,
    count: int = 1,
    relation: Neighbouring = Neighbouring.ADD_OR_REMOVE,
) -> Leaves | Unsupported:
    """The multiset {leaf: count} of ``event`` composed ``count`` times, or why it cannot be."""
    leaves: Leaves = Counter()
    for item in _walk(event, count, relation):
        if isinstance(item, Unsupported):
            return item
        leaf, n = item
        if leaf.non_private:
            leaves[NON_PRIVATE] = 1
        else:
            leaves[leaf] += n
    return leaves
