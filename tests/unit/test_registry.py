"""fairfleet.registry.Registry: the one name -> plugin registry (strategies, connectors, models,
accountants). Registration is checked against a dict model under random operation sequences."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairfleet import registry
from fairfleet.errors import ConfigError
from fairfleet.registry import Registry

GROUP = "fairfleet.test_plugins"


class A: ...


class B: ...


class C: ...


def _accept(name: str, obj: Any) -> type:
    if not isinstance(obj, type):
        raise ConfigError(f"Plugin {name!r} must be a class. Found {obj!r}.")
    return obj


def _with_entry_points(
    monkeypatch: pytest.MonkeyPatch, *eps: EntryPoint
) -> Callable[[], list[str]]:
    """Fake installed metadata; returns a function listing the groups that were read."""
    seen: list[str] = []

    def fake(*, group: str) -> list[EntryPoint]:
        seen.append(group)
        return [ep for ep in eps if ep.group == group]

    monkeypatch.setattr(registry, "entry_points", fake)
    return lambda: seen


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["x", "y", "z"]), st.sampled_from([A, B, C]), st.booleans()))
)
def test_registration_matches_a_dict_model(ops: list[tuple[str, type, bool]]) -> None:
    reg: Registry[type] = Registry("plugin", None, accept=_accept)
    model: dict[str, type] = {}
    for name, cls, replace in ops:
        if name in model and model[name] is not cls and not replace:
            with pytest.raises(ConfigError, match=f"'{name}' is already registered"):
                reg.register(name, cls)
        else:
            reg.register(name, cls, replace=replace)
            model[name] = cls
    assert reg.names() == sorted(model)
    assert reg.load_all() == model


def test_unknown_names_list_the_known_ones_and_aliases_resolve() -> None:
    reg: Registry[type] = Registry(
        "plugin", None, accept=_accept, builtins={"b": f"{__name__}:B"}, aliases={"bee": "b"}
    )
    reg.register("a", A)
    assert reg.names() == ["a", "b"] and "bee" in reg and "nope" not in reg
    assert reg.get("bee") is B
    with pytest.raises(ConfigError, match=r"Unknown plugin 'nope'\. Known: a, b\."):
        reg.get("nope")
    with pytest.raises(ConfigError, match="must be a class"):
        reg.register("c", 3)
    with pytest.raises(ConfigError, match="non-empty string"):
        reg.register("", A)


def test_a_builtin_name_is_not_taken_by_another_object() -> None:
    reg: Registry[type] = Registry("plugin", None, accept=_accept, builtins={"b": f"{__name__}:B"})
    with pytest.raises(
        ConfigError, match=rf"'b' is already registered by the built-in {__name__}:B"
    ):
        reg.register("b", A)
    reg.register("b", B)  # the built-in's own object (an __init_subclass__ hook) is fine
    assert reg.get("b") is B


def test_entry_points_are_read_once_listed_without_loading_and_refreshed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = _with_entry_points(
        monkeypatch,
        EntryPoint("c", f"{__name__}:C", GROUP),
        EntryPoint("broken", "no_such_module_here:X", GROUP),
        EntryPoint("other", f"{__name__}:A", "another.group"),
    )
    reg: Registry[type] = Registry("plugin", GROUP, accept=_accept)
    assert reg.names() == ["broken", "c"]  # nothing imported yet: a broken plugin still lists
    assert reg.get("c") is C and reg.get("c") is C
    assert seen() == [GROUP]
    with pytest.raises(ConfigError, match=r"'broken' = no_such_module_here:X .*cannot be loaded"):
        reg.get("broken")
    _with_entry_points(monkeypatch)  # the plugins are uninstalled
    reg.refresh()
    assert reg.names() == []


def test_an_entry_point_may_not_reuse_a_taken_name(monkeypatch: pytest.MonkeyPatch) -> None:
    _with_entry_points(monkeypatch, EntryPoint("b", f"{__name__}:C", GROUP))
    reg: Registry[type] = Registry("plugin", GROUP, accept=_accept, builtins={"b": f"{__name__}:B"})
    with pytest.raises(
        ConfigError,
        match=rf"Entry point 'b' = {__name__}:C .*reuses the name of the plugin {__name__}:B",
    ):
        reg.names()
    _with_entry_points(monkeypatch, EntryPoint("a", f"{__name__}:C", GROUP))
    runtime: Registry[type] = Registry("plugin", GROUP, accept=_accept)
    runtime.register("a", A)
    with pytest.raises(ConfigError, match=rf"'a' = {__name__}:C .*plugin {__name__}:A"):
        runtime.get("a")
    _with_entry_points(monkeypatch, EntryPoint("a", f"{__name__}:A", GROUP))
    same: Registry[type] = Registry("plugin", GROUP, accept=_accept)
    same.register("a", A)  # a plugin whose class registers itself under its entry-point name
    assert same.get("a") is A


def test_every_plugin_registry_is_one_registry() -> None:
    from fairfleet.connectors import CONNECTORS
    from fairfleet.fairness import STRATEGIES
    from fairfleet.learning.models import MODELS
    from fairfleet.privacy.accounting import ACCOUNTANTS

    groups = {r.group for r in (CONNECTORS, STRATEGIES, MODELS, ACCOUNTANTS)}
    assert all(isinstance(r, Registry) for r in (CONNECTORS, STRATEGIES, MODELS, ACCOUNTANTS))
    assert groups == {
        "fairfleet.connectors",
        "fairfleet.strategies",
        "fairfleet.models",
        "fairfleet.accountants",
    }
