"""A late site joins a stalled round through the aggregator's re-announcement (in-process bus,
the real aggregator, site agents and accountant): the round closes with both sites, and the site
that published before the re-announcement publishes exactly once."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from site_agent_testkit import RealAccountant, fleet_dict, model_entry, read_all, site_entry

from fairfleet.aggregator import Aggregator, AggregatorOptions
from fairfleet.bus import Topics, connect
from fairfleet.config import parse_config
from fairfleet.messages import RoundAnnouncement, SiteUpdate
from fairfleet.site_agent import SiteAgent

DEADLINE_S = 1.5


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


def test_a_late_site_joins_the_reannounced_round_and_the_round_closes(tmp_path: Path) -> None:
    prefix = f"u{uuid.uuid4().hex[:6]}."
    bus = connect(f"memory://{uuid.uuid4().hex}")
    bus.create_topics(Topics(prefix).specs())
    model = {
        **model_entry("m1"),
        "strategy": {"name": "fedavg"},
        "rounds": {
            "mode": "sync",
            "rounds": 1,
            "deadline_s": DEADLINE_S,
            "min_sites": 2,
            "quorum": 2,
        },
    }
    raw = fleet_dict(
        "127.0.0.1:1",
        prefix,
        [csv_site(tmp_path, "s1"), csv_site(tmp_path, "s2")],
        [model],
        10.0,
        None,
        tmp_path,
    )
    config = parse_config(raw)
    agg = Aggregator(config, "m1", bus=bus, options=AggregatorOptions(poll_timeout_s=0.01))
    agg.start()
    opened = agg.ckpt.announcement
    assert opened is not None
    early = SiteAgent(config, "s1", bus=bus)
    late: SiteAgent | None = None
    with RealAccountant(bus, raw, tmp_path):
        stop = time.monotonic() + 60
        while not agg.finished and time.monotonic() < stop:
            agg.step()
            early.step(0.01)
            if late is None and time.time() > opened.opened_at + DEADLINE_S + 0.2:
                late = SiteAgent(config, "s2", bus=bus)  # comes up after the deadline
            if late is not None:
                late.step(0.01)
        early.close()
        assert late is not None
        late.close()
    agg.close()
    assert agg.finished, agg.status()
    assert agg.ckpt.history[-1]["sites"] == ["s1", "s2"]
    assert agg.metrics.extensions.labels("m1")._value.get() >= 1
    rounds = [m for m, _ in read_all(bus, prefix, "rounds") if isinstance(m, RoundAnnouncement)]
    assert len(rounds) >= 2 and {(a.round, a.model_version) for a in rounds} == {(0, 0)}
    updates = [m for m, _ in read_all(bus, prefix, "updates") if isinstance(m, SiteUpdate)]
    assert sorted(u.site for u in updates) == ["s1", "s2"]  # s1 did not publish again
    assert early.store.get("m1", 0).status == "published"  # type: ignore[union-attr]
    assert late.store.get("m1", 0).status == "published"  # type: ignore[union-attr]
    skipped = late.metrics.registry.get_sample_value(
        "fairfleet_site_rounds_skipped_total", {"site": "s2", "model": "m1", "reason": "expired"}
    )
    assert skipped == 1  # the first announcement had expired; the re-announcement was joined
