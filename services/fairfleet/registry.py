"""One registry of named plugins: built-ins, runtime registrations and entry points.

Strategies, connectors, models and accountants are all found by name the same way
(STYLE.md 6, opacus ``accountants/registry.py``)::

    STRATEGIES = Registry("strategy", "fairfleet.strategies", accept=as_strategy_class,
                          builtins={"fedavg": "fairfleet.fairness.fedavg:FedAvg"})
    STRATEGIES.get("fedavg")          # the class; ConfigError listing the known names if unknown

A name comes from one of three places, and one name from two places is refused (ConfigError
naming both), whichever is found first:

* a built-in: a ``"module:attr"`` target imported on first use (so listing names imports
  nothing), or an object registered when its module is imported;
* :meth:`Registry.register` at run time (tests, notebooks, ``__init_subclass__`` hooks);
* an entry point of the registry's group in an installed package's metadata
  (``importlib.metadata.entry_points``), loaded on first use.

``accept(name, obj)`` turns what was found into the registry's value (a class, a factory) or
raises ConfigError naming the bad object. The module does no I/O beyond reading installed
packages' entry-point metadata, so the pure packages may use it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar

from fairfleet.errors import ConfigError

T = TypeVar("T")


def target_of(obj: Any) -> str:
    """``"module:qualname"`` of ``obj`` (how built-ins and entry points name their object)."""
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"


def import_target(target: str) -> Any:
    """The object a ``"module:attr"`` string names (``attr`` may be dotted)."""
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


def subclass_of(base: type, label: str) -> Callable[[str, Any], Any]:
    """An ``accept`` for registries of classes: ``obj`` if it subclasses ``base``, else
    ConfigError ``"<label> 'name' must be a <base> subclass. Found <obj>."``."""

    def accept(name: str, obj: Any) -> Any:
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise ConfigError(
                f"{label} {name!r} must be a {base.__name__} subclass. Found {obj!r}."
            )
        return obj

    return accept


class Registry(Generic[T]):
    """Name → value (a class or a factory) for one kind of plugin.

    ``kind`` names the plugin in messages ("strategy", "connector type"); ``group`` is the
    entry-point group (None: no plugins); ``builtins`` maps names to lazy ``"module:attr"``
    targets; ``aliases`` maps extra names to registered ones (not listed by :meth:`names`).
    """

    def __init__(
        self,
        kind: str,
        group: str | None,
        *,
        accept: Callable[[str, Any], T],
        builtins: Mapping[str, str] | None = None,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        self.kind, self.group = kind, group
        self._accept = accept
        self._builtins = dict(builtins or {})
        self._aliases = dict(aliases or {})
        self._values: dict[str, T] = {}
        self._origins: dict[str, str] = {}  # name -> where its value came from (for messages)
        self._targets: dict[str, str] = {}  # name -> "module:qualname" of the registered object
        self._entry_points: dict[str, EntryPoint] | None = None  # discovered lazily

    # ------------------------------------------------------------------ registration
    def register(self, name: str, obj: Any, *, origin: str = "", replace: bool = False) -> T:
        """Add ``obj`` under ``name``; a different object already under ``name`` (registered,
        built in or published as an entry point) is refused unless ``replace``."""
        if not isinstance(name, str) or not name:
            raise ConfigError(f"A {self.kind} name must be a non-empty string. Found {name!r}.")
        value = self._accept(name, obj)
        origin = origin or target_of(obj)
        if not replace:
            other = self._other_origin(name, value, obj)
            if other is not None:
                raise ConfigError(
                    f"{self.kind.capitalize()} {name!r} is already registered by {other}; "
                    f"refusing {origin}."
                )
        self._values[name] = value
        self._origins[name] = origin
        self._targets[name] = target_of(obj)
        return value

    def unregister(self, name: str) -> None:
        """Forget a runtime or loaded registration (built-ins stay listed)."""
        self._values.pop(name, None)
        self._origins.pop(name, None)
        self._targets.pop(name, None)

    def _other_origin(self, name: str, value: T, obj: Any) -> str | None:
        """Where a *different* object named ``name`` comes from, or None."""
        if name in self._values:
            return None if self._values[name] == value else self._origins[name]
        if name in self._builtins and self._builtins[name] != target_of(obj):
            return f"the built-in {self._builtins[name]}"
        # Entry points not yet discovered are checked against registrations when they are.
        ep = (self._entry_points or {}).get(name)
        if ep is not None and ep.value != target_of(obj):
            return f"the entry point {ep.value} (group {self.group!r})"
        return None

    # ------------------------------------------------------------------ discovery
    def _discover(self) -> dict[str, EntryPoint]:
        if self._entry_points is None:
            found = (
                {} if self.group is None else {ep.name: ep for ep in entry_points(group=self.group)}
            )
            for name, ep in found.items():
                other = self._builtins.get(name, self._targets.get(name))
                if other is not None and ep.value != other:
                    raise ConfigError(
                        f"Entry point {name!r} = {ep.value} in group {self.group!r} reuses the "
                        f"name of the {self.kind} {other}."
                    )
            self._entry_points = found
        return self._entry_points

    def refresh(self) -> None:
        """Re-read the installed entry points (after installing or removing a plugin)."""
        self._entry_points = None
        for name in [n for n, o in self._origins.items() if o.startswith("entry point ")]:
            self.unregister(name)

    def names(self) -> list[str]:
        """Every name :meth:`get` accepts, aliases excluded, sorted (imports nothing)."""
        return sorted(set(self._builtins) | set(self._values) | set(self._discover()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._aliases.get(name, name) in self.names()

    # ------------------------------------------------------------------ lookup
    def get(self, name: str) -> T:
        """The value registered as ``name`` (or an alias of it), loading it on first use;
        ConfigError naming ``name`` and every known name if there is none."""
        key = self._aliases.get(name, name) if isinstance(name, str) else name
        entry_points_found = self._discover()  # (once) refuses a plugin reusing a taken name
        if key in self._values:
            return self._values[key]
        if key in self._builtins:
            obj = import_target(self._builtins[key])
            if key in self._values:  # importing it registered it (an __init_subclass__ hook)
                return self._values[key]
            return self.register(key, obj, origin=f"the built-in {self._builtins[key]}")
        ep = entry_points_found.get(key) if isinstance(key, str) else None
        if ep is None:
            raise ConfigError(f"Unknown {self.kind} {name!r}. Known: {', '.join(self.names())}.")
        try:
            obj = ep.load()
        except Exception as exc:
            raise ConfigError(
                f"Entry point {key!r} = {ep.value} in group {self.group!r} cannot be loaded: {exc}"
            ) from exc
        return self.register(key, obj, origin=f"entry point {ep.value}", replace=True)

    def load_all(self) -> dict[str, T]:
        """Name → value of every registered name (imports built-ins and plugins)."""
        return {name: self.get(name) for name in self.names()}
