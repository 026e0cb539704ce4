"""A site reconciles its local records with the bus: after the fleet lost its topics and the
aggregator bootstrapped again (a new epoch), the site trains for the new round 0 although its
state file says "round 0 published" — and it is never charged twice for one release.

In-process bus; the real aggregator, site agent and accountant. "Losing the topics" is a fresh
bus with the same site state folder.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from site_agent_testkit import RealAccountant, fleet_dict, model_entry, site_entry

from fairfleet.aggregator import Aggregator, AggregatorOptions
from fairfleet.bus import Bus, Topics, connect
from fairfleet.config import FleetConfig, parse_config
from fairfleet.site_agent import SiteAgent


def csv_site(tmp: Path, site: str) -> dict[str, Any]:
    folder = tmp / f"csv-{site}"
    folder.mkdir()
    lines = ["x0,x1,y"] + [f"{(i % 7) / 7:.3f},{(i % 5) / 5:.3f},{i % 2}" for i in range(80)]
    (folder / "part-000.csv").write_text("\n".join(lines) + "\n")
    connector = {
        "type": "files",
        "params": {
            "path": str(folder),
            "target": "y",
            "fields": {"x0": "float", "x1": "float", "y": "int"},
        },
    }
    return site_entry(tmp, site, connector, ["m1"], site_class=site)


def run_rounds(
    config: FleetConfig, raw: dict[str, Any], bus: Bus, tmp: Path, rounds: int
) -> Aggregator:
    agg = Aggregator(config, "m1", bus=bus, options=AggregatorOptions(poll_timeout_s=0.01))
    agg.start()
    agent = SiteAgent(config, "s1", bus=bus)
    with RealAccountant(bus, raw, tmp):
        stop = time.monotonic() + 60
        while agg.ckpt.round < rounds and time.monotonic() < stop:
            agg.step()
            agent.step(0.01)
    agent.close()
    agg.close()
    return agg


def test_a_site_trains_again_after_the_fleet_lost_its_topics(tmp_path: Path) -> None:
    prefix = f"u{uuid.uuid4().hex[:6]}."
    model = {
        **model_entry("m1"),
        "strategy": {"name": "fedavg"},
        "rounds": {"mode": "sync", "rounds": 10, "deadline_s": 30, "min_sites": 1, "quorum": 1},
    }
    raw = fleet_dict(
        "127.0.0.1:1", prefix, [csv_site(tmp_path, "s1")], [model], 10.0, None, tmp_path
    )
    config = parse_config(raw)
    first_bus = connect(f"memory://{uuid.uuid4().hex}")
    first_bus.create_topics(Topics(prefix).specs())
    first = run_rounds(config, raw, first_bus, tmp_path, 2)
    assert first.ckpt.round == 2
    state_file = tmp_path / "state" / "s1" / "rounds.json"
    assert json.loads(state_file.read_text())["m1/0"]["status"] == "published"

    lost_bus = connect(f"memory://{uuid.uuid4().hex}")  # every topic lost; the site's state kept
    lost_bus.create_topics(Topics(prefix).specs())
    second = run_rounds(config, raw, lost_bus, tmp_path, 2)
    assert second.ckpt.round == 2, second.status()  # the site trained rounds 0 and 1 again
    assert second.ckpt.epoch != first.ckpt.epoch
    assert [h["sites"] for h in second.ckpt.history] == [["s1"], ["s1"]]
    archived = [
        json.loads(line)
        for line in (tmp_path / "state" / "s1" / "rounds.archive.jsonl").read_text().splitlines()
    ]
    assert {(a["key"], a["status"], a["epoch"]) for a in archived} >= {
        ("m1/0", "published", first.ckpt.epoch),
        ("m1/1", "published", first.ckpt.epoch),
    }
    states = json.loads(state_file.read_text())
    assert states["@epochs"] == {"m1": second.ckpt.epoch}
    assert states["m1/0"]["status"] == "published"
