"""The chaos soak, short: one of each fault on a real broker the test starts itself (bench/chaos.py).

A fleet of 2 models and 6 sites runs as real processes on its own broker (never the shared one:
the broker itself is killed and restarted) while one site agent, one aggregator and the
accountant are SIGKILLed, the broker is killed and started again on the same folder, a budget is
raised, a key rotated and a site added. Everything asserted is read from the topics and the
ledgers after the run: the live ledger equals a replay of ``privacy.events``, nothing is charged
twice, no committed update of a closed round is lost, and after every fault each model's round
advanced within the bounded wait (deadline × (re-announcements + 1), plus SLACK_S for process
start-up and consumer-group joins on a loaded 2-core machine).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.chaos import SoakSettings, run_soak

pytestmark = pytest.mark.slow

SLACK_S = 10.0


def test_chaos_soak_short(tmp_path: Path) -> None:
    # rounds enough never to finish first: the run ends once every fault was injected (spread
    # over 30 rounds) and the models ran on for two bounds
    settings = SoakSettings(
        rounds=500, fault_rounds=30, until_faults_done=True, wall_cap_s=420.0, seed=3
    )
    result = run_soak(settings, tmp_path)
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "rounds_completed",
                    "rounds_voided",
                    "max_stall_seconds",
                    "ledger_matches_replay",
                    "double_charged",
                    "lost_updates",
                    "faults",
                    "faults_not_injected",
                )
            },
            indent=1,
        )
    )
    assert result["ledger_matches_replay"], result["ledger_events"]
    assert result["double_charged"] == 0, result["double_charged_keys"]
    assert result["lost_updates"] == 0, result["lost_update_keys"]
    assert result["ended_by"] == "faults_done", result["ended_by"]
    injected = {f["kind"] for f in result["faults"]}
    assert injected == set(settings.kinds), (
        f"faults not injected: {result['faults_not_injected']} (ended by {result['ended_by']})"
    )
    bound = result["bound_seconds"] + SLACK_S
    for fault in result["faults"]:
        for model, seconds in fault["recovery_s"].items():
            assert seconds is not None and seconds <= bound, (
                f"after {fault['kind']} ({fault['target']}) model {model} advanced after "
                f"{seconds} s; bound {result['bound_seconds']} s + {SLACK_S} s slack"
            )
