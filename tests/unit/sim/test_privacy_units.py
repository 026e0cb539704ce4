"""Both privacy units in measurement: the run's event is the live agents' event, calibrated to ε."""

from __future__ import annotations

import dp_accounting
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairfleet.messages import LocalTrainingPlan, PrivacyPlan
from fairfleet.privacy.dpsgd import steps_per_epoch
from fairfleet.sim.decompose import DecomposeConfig, decompose
from fairfleet.sim.engine import Privacy, TrainConfig
from fairfleet.site_agent.release import round_event


@settings(max_examples=15, deadline=None)
@given(
    q=st.sampled_from([0.02, 0.05, 0.1, 0.25]),
    z=st.floats(0.5, 5.0),
    fair=st.booleans(),
    m=st.integers(1, 500),
)
def test_record_level_round_event_is_the_site_agents(
    q: float, z: float, fair: bool, m: int
) -> None:
    """A DP-SGD round in measurement composes exactly what a live agent reserves for the same
    plan (update: DP-SGD steps; loss: Gaussian(σ_loss) at the observation unit)."""
    privacy = Privacy(8.0, 1e-5, 1.0, 1.0, 2 if fair else 1, "observation", q, steps_per_epoch(q))
    plan = PrivacyPlan(
        mechanism="dpsgd",
        unit="observation",
        noise_multiplier=z,
        clip_norm=1.0,
        sampling_rate=q,
        loss_noise_multiplier=z,
    )
    live = round_event(plan, LocalTrainingPlan(epochs=1), m)
    if fair:
        assert privacy.round_event(z) == live
    else:
        assert privacy.round_event(z) == live.events[0]


@pytest.mark.parametrize(
    "unit,q,releases",
    [("site", None, 1), ("site", None, 2), ("observation", 0.1, 1), ("observation", 0.1, 2)],
)
def test_calibrated_z_meets_epsilon_and_is_near_smallest(
    unit: str, q: float | None, releases: int
) -> None:
    privacy = Privacy(4.0, 1e-5, 1.0, 1.0, releases, unit, q, steps_per_epoch(q) if q else 1)
    z = privacy.noise_multiplier(10)
    spent = privacy.run_epsilon(z, 10)
    assert spent <= 4.0 + 1e-9 and spent > 4.0 * 0.995
    assert privacy.run_epsilon(z * 0.98, 10) > 4.0
    if unit == "site":  # the site unit's event is r·R Gaussian releases
        event = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), releases * 10)
        from fairfleet.privacy.accounting import epsilon

        assert epsilon(event, 1e-5) == pytest.approx(spent, rel=1e-9)


def test_decompose_names_the_unit_and_spends_epsilon_at_the_record_level() -> None:
    train = TrainConfig(rounds=3, local_steps=4, clip_norm=1.0, unit="observation")
    doc = decompose(DecomposeConfig("demo", seeds=2, train=train, workers=1))
    assert doc["privacy_unit"] == "observation"
    assert doc["config"]["privacy"].startswith("record-level")
    for config in ("theta10", "theta11"):
        hist = doc["history"][config]
        assert hist["epsilon_spent"][-1] == pytest.approx(8.0, rel=0.01)
        assert hist["epsilon_spent"] == sorted(hist["epsilon_spent"])
