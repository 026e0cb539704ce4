"""`fairfleet report`'s per-round estimates from a checkpoint history and the sites' loss
releases: each accepted update's own loss (sync and async with staleness), voided rounds left out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fairfleet.config import parse_config
from fairfleet.fleet_report import round_entries
from fairfleet.messages import NoisyStat, SiteStatistics

SITES = {"a-0": "a", "a-1": "a", "b-0": "b"}


def config(tmp: Path) -> object:
    sites = [
        {
            "id": s,
            "class": c,
            "public_key": f"{i + 1:064x}",
            "models": ["m"],
            "window": {"by": "time", "size": 60},
        }
        for i, (s, c) in enumerate(SITES.items())
    ]
    return parse_config(
        {
            "models": [{"id": "m", "model": {"name": "logistic", "params": {"in_features": 2}}}],
            "sites": sites,
            "state_dir": str(tmp),
        }
    )


def stat(site: str, round_: int, version: int, value: float, n: int) -> SiteStatistics:
    return SiteStatistics(
        site=site,
        site_class=SITES[site],
        model_id="m",
        round=round_,
        model_version=version,
        loss=NoisyStat(value=value, noise_std=0.01, m=40, hi=2.0),
        n_examples=n,
    )


def test_each_round_uses_the_losses_of_the_updates_it_accepted(tmp_path: Path) -> None:
    released = [
        stat("a-0", 0, 0, 0.50, 100),
        stat("a-1", 0, 0, 0.70, 50),
        stat("b-0", 0, 0, 1.30, 10),
        stat("a-0", 1, 1, 0.40, 100),  # round 1 is voided: this release is thrown away
        stat("a-0", 2, 1, 0.45, 100),
        stat("b-0", 2, 1, 1.10, 10),
        stat("a-1", 3, 2, 0.60, 50),  # async round 3 also takes b-0's round-2 update (τ = 1)
    ]
    history = [
        {"round": 0, "version": 1, "sites": ["a-0", "a-1", "b-0"], "staleness": [0, 0, 0]},
        {"round": 1, "version": 1, "sites": ["a-0"], "voided": True},
        {"round": 2, "version": 2, "sites": ["a-0", "b-0"], "staleness": [0, 0]},
        {"round": 3, "version": 3, "sites": ["a-1", "b-0"], "staleness": [0, 1]},
    ]
    by_round = {(s.site, s.round): s for s in released}
    entries = round_entries(config(tmp_path), history, by_round)  # type: ignore[arg-type]
    assert [e["round"] for e in entries] == [0, 2, 3]
    first, second, third = entries
    # the class means over sites, the fleet mean weighted by n_k (brute force)
    assert first["classes"]["a"]["raw"] == pytest.approx(0.60)
    assert first["estimates"]["fleet"] == pytest.approx(
        np.average([0.5, 0.7, 1.3], weights=[100, 50, 10])
    )
    assert second["classes"]["a"]["raw"] == pytest.approx(0.45) and second["version"] == 1
    assert third["classes"]["b"]["raw"] == pytest.approx(1.10)  # the stale update's own loss
    assert third["classes"]["a"]["raw"] == pytest.approx(0.60)
    assert third["classes"]["b"]["sites"] == ["b-0"] and third["version"] == 1
    for e in entries:
        assert e["gap"] == e["estimates"]["gap"]["debiased"]
        for c, v in e["classes"].items():
            assert v["gap_to_fleet"] == pytest.approx(v["loss"] - e["fleet_loss"])
            assert v["loss"] == e["estimates"]["classes"][c]["shrunk"]
