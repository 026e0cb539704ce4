"""One policy model, one resolver: config check, the ledger and /budgets give the same answer.

The rule (privacy/policy.py): the most specific level naming the site decides alone; within it
the entry of the ledger's unit beats an entry without a unit; no entry for the unit → no policy.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairfleet.cli._config_checks import CheckReport, check_policy_units, site_policies
from fairfleet.config import parse_config
from fairfleet.errors import ConfigError
from fairfleet.privacy.events import PrivacyRecord, gaussian_event
from fairfleet.privacy.ledger import Ledger
from fairfleet.privacy.policy import Policy, PolicySet

KEY = "a" * 64


def _fleet(unit: str) -> dict[str, Any]:
    """The issue's case: plant-a has its own {ε_max 2, observation}; the default is {8, site}."""
    return {
        "kafka": {"bootstrap": "127.0.0.1:1"},
        "models": [
            {
                "id": "m",
                "model": {"name": "linear"},
                "privacy": {
                    "mechanism": "update" if unit == "site" else "dpsgd",
                    "unit": unit,
                    "sampling_rate": 0.1,
                },
            }
        ],
        "policies": {
            "defaults": {"epsilon_max": 8.0, "delta": 1e-5, "unit": "site"},
            "sites": {"plant-a": {"epsilon_max": 2.0, "delta": 1e-5, "unit": "observation"}},
        },
        "sites": [
            {"id": "plant-a", "class": "modern", "public_key": KEY, "connector": {"type": "x"}},
            {
                "id": "plant-b",
                "class": "modern",
                "public_key": "b" * 64,
                "connector": {"type": "x"},
            },
        ],
    }


def _release(site: str, unit: str, site_class: str = "modern") -> PrivacyRecord:
    return PrivacyRecord.model_validate(
        {
            "event_id": f"{site}/{unit}",
            "unit": unit,
            "site": site,
            "source": "line",
            "windows": {"first": 0, "last": 0},
            "model_id": "m",
            "site_class": site_class,
            "dp_event": gaussian_event(50.0),
        }
    )


@pytest.mark.parametrize("unit", ["site", "observation"])
def test_config_check_and_the_accountant_agree(unit: str) -> None:
    """The disagreeing case of issue 10: config check said 2, the accountant enforced 8."""
    data = _fleet(unit)
    cfg = parse_config(data)
    shown = site_policies(cfg, cfg.site("plant-a"))[unit]
    ledger = Ledger(cfg.policy_set())
    decision = ledger.reserve(_release("plant-a", unit))
    row = ledger.budgets(site="plant-a")
    assert shown["entry"] == "sites.plant-a"
    if unit == "observation":
        assert decision.granted and decision.epsilon_limit == shown["epsilon_max"] == 2.0
        assert row[0]["policy"] == "sites.plant-a" and row[0]["epsilon_limit"] == 2.0
    else:
        # the site's own entry has no site-unit policy: denied, never the looser default's 8
        assert shown["epsilon_max"] is None
        assert not decision.granted and decision.code == "no_policy"
        assert "sites.plant-a has no policy for unit site" in decision.reason
        report = CheckReport()
        check_policy_units(cfg, report)  # what `fairfleet config check` runs
        assert any(
            p.startswith("policies.sites.plant-a.unit: site 'plant-a'") for p in report.problems
        ), report.problems
    # a site without its own entry gets the default for the site unit only
    assert ledger.policies.resolve("site", "plant-b").matched == "defaults"
    assert ledger.policies.policy("observation", "plant-b") is None


LEVEL = st.lists(
    st.sampled_from([None, "observation", "site"]), min_size=1, max_size=3, unique=True
).map(lambda units: [Policy(epsilon_max=1.0 + i, delta=1e-5, unit=u) for i, u in enumerate(units)])


@settings(max_examples=200, deadline=None)
@given(
    site_level=st.none() | LEVEL,
    class_level=st.none() | LEVEL,
    default_level=st.none() | LEVEL,
    unit=st.sampled_from(["observation", "site"]),
)
def test_the_most_specific_level_decides_alone(
    site_level: list[Policy] | None,
    class_level: list[Policy] | None,
    default_level: list[Policy] | None,
    unit: str,
) -> None:
    """Against a brute-force reading of the documented rule, for every combination of levels."""
    policies = PolicySet(
        defaults=default_level,
        classes={"c": class_level} if class_level else {},
        sites={"s": site_level} if site_level else {},
        site_classes={"s": "c"},
    )
    match = policies.resolve(unit, "s")
    levels = [("sites.s", site_level), ("classes.c", class_level), ("defaults", default_level)]
    name, level = next(((n, lv) for n, lv in levels if lv), ("", None))
    assert match.matched == name
    exact = [p for p in level or [] if p.unit == unit]
    anyunit = [p for p in level or [] if p.unit is None]
    assert match.policy == (exact or anyunit or [None])[0]
    if match.policy is None:
        assert match.reason


def test_bad_policies_are_named() -> None:
    with pytest.raises(ValueError, match="more than one policy for site"):
        PolicySet(defaults=[{"epsilon_max": 1, "unit": "site"}, {"epsilon_max": 2, "unit": "site"}])
    with pytest.raises(ConfigError, match=r"policies.sites.plant-a.epsilon_max"):
        data = _fleet("site")
        data["policies"]["sites"]["plant-a"]["epsilon_max"] = float("inf")
        parse_config(data)
    with pytest.raises(ValueError, match=r"unit must be observation or site\. Found 'row'"):
        PolicySet().resolve("row", "s")


def test_a_config_without_policies_keeps_the_documented_default() -> None:
    data = _fleet("site")
    del data["policies"]
    cfg = parse_config(data)
    assert cfg.policy_for("plant-a", "site").policy == Policy(
        epsilon_max=8.0, delta=1e-5, unit="site"
    )
    assert cfg.policy_for("plant-a", "observation").policy is None
