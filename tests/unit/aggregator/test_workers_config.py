"""Several aggregator workers per model: the config field, the strategies that can be split,
the partial message round trip, and the services `fairfleet up` starts (no broker)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from fairfleet import launcher
from fairfleet.aggregator.partials import from_message, to_message
from fairfleet.aggregator.rounds import check_workers
from fairfleet.config import parse_config
from fairfleet.errors import ConfigError, PayloadError
from fairfleet.fairness import NoisyStat, RoundFold, SiteUpdate, Strategy, build_strategy
from fairfleet.fairness.state import StrategyState
from fairfleet.fairness.types import AggregateResult


def fleet(workers: Any = None, mode: str = "sync", metrics_port: int = 9301) -> dict[str, Any]:
    aggregator: dict[str, Any] = {"public_key": "ab" * 32}
    if workers is not None:
        aggregator["workers"] = workers
    return {
        "kafka": {"bootstrap": "127.0.0.1:9092"},
        "models": [
            {
                "id": "m",
                "model": {"name": "linear", "params": {"in_features": 3}},
                "rounds": {"mode": mode},
                "aggregator": aggregator,
                "metrics_port": metrics_port,
            }
        ],
        "sites": [],
    }


def test_one_worker_is_the_default_and_bad_counts_are_refused() -> None:
    assert parse_config(fleet()).models[0].workers == 1
    assert parse_config(fleet(3)).models[0].workers == 3
    for bad in (0, -1, "two"):
        with pytest.raises(Exception, match="workers"):
            parse_config(fleet(bad))
    with pytest.raises(Exception, match=r"workers > 1 needs rounds.mode 'sync'.*'async'"):
        parse_config(fleet(2, mode="async"))


class _Median(Strategy):
    name = "test-median"

    def aggregate(
        self, global_vec: np.ndarray, updates: Any, state: StrategyState
    ) -> AggregateResult:
        return AggregateResult(global_vec + np.median([u.delta for u in updates], axis=0), state)


def test_a_strategy_that_keeps_its_updates_refuses_workers_naming_it() -> None:
    model = parse_config(fleet(2)).models[0]
    with pytest.raises(ConfigError, match=r"'test-median' does not fold.*workers: 1"):
        check_workers(model, _Median())
    check_workers(parse_config(fleet(1)).models[0], _Median())  # one worker: anything goes
    for name in ("fedavg", "fedadam", "fedyogi", "qffl", "afl", "term", "gap"):
        check_workers(model, build_strategy(name))


def test_a_partial_survives_its_message_and_a_changed_payload_is_refused() -> None:
    strategy = build_strategy("gap")
    rng = np.random.default_rng(3)
    fold = RoundFold(strategy, strategy.initial_state(), 5)
    origins = {}
    for i in range(4):
        fold.add(
            SiteUpdate(
                site=f"s{i}",
                site_class="ab"[i % 2],
                n_examples=10 * (i + 1),
                delta=rng.normal(0, 1, 5).astype(np.float32),
                loss=NoisyStat(0.5 + i, 0.1, 20),
                noise_std=0.01,
                clip_norm=1.0,
            )
        )
        origins[f"s{i}"] = (1, 40 + i)
    msg, payload = to_message(
        fold.partial(),
        origins,
        model_id="m",
        round_=2,
        base_version=2,
        worker=1,
        partition=1,
        next_offset=44,
    )
    assert [(s.partition, s.offset) for s in msg.sites] == sorted(origins.values())
    again = RoundFold(strategy, strategy.initial_state(), 5)
    again.merge([from_message(msg, payload)])
    theta = np.zeros(5, dtype=np.float32)
    np.testing.assert_array_equal(again.close(theta).new_global, fold.close(theta).new_global)
    with pytest.raises(PayloadError, match="sha256"):
        from_message(msg, payload[:-1] + bytes([payload[-1] ^ 1]))


def test_up_starts_the_combiner_and_every_worker(tmp_path: Path) -> None:
    config = tmp_path / "fleet.yaml"
    data = fleet(2)
    data["models"][0]["aggregator"]["private_key_file"] = "agg.key"
    config.write_text(yaml.safe_dump(data))
    services = {s.name: s for s in launcher.plan(config, tmp_path)}
    combiner = services["aggregator-m"]
    assert "--worker" not in combiner.args and combiner.port == 9301
    for i in (0, 1):
        worker = services[f"aggregator-m-worker-{i}"]
        assert worker.kind == "aggregator" and worker.port == 9302 + i
        assert worker.args[worker.args.index("--worker") + 1] == str(i)
    one = fleet()
    config.write_text(yaml.safe_dump(one))
    assert [s.name for s in launcher.plan(config, tmp_path) if s.kind == "aggregator"] == [
        "aggregator-m"
    ]


def test_flush_is_paced_by_the_last_flush_but_always_comes() -> None:
    from fairfleet.aggregator.worker import FLUSH_GAP_FACTOR, MAX_FLUSH_GAP_S, flush_due

    def due(now: float, idle: bool = True, dirty_since: float | None = 0.0, **kw: float) -> bool:
        args = {"interval_s": 0.5, "last_flush_end": 0.0, "last_flush_s": 0.0, **kw}
        return flush_due(now, idle=idle, uncommitted=True, dirty_since=dirty_since, **args)

    # quick flushes: as before, at once when idle, after interval_s while updates keep coming
    assert due(0.01, last_flush_s=0.001)
    assert not due(0.4, idle=False) and due(0.5, idle=False)
    # a 2 s flush (D = 5M partials) holds the next one 4 x 2 s, idle or not, then it comes
    slow = {"last_flush_end": 10.0, "last_flush_s": 2.0}
    assert FLUSH_GAP_FACTOR == 4.0
    assert not due(17.9, **slow) and not due(17.9, idle=False, dirty_since=11.0, **slow)
    assert due(18.0, **slow) and due(18.0, idle=False, dirty_since=10.0, **slow)
    assert not due(18.0, idle=False, dirty_since=10.5, **slow)  # the interval stretches to 8 s
    # a stalled flush does not hold the next one longer than the cap
    stall = {"last_flush_end": 100.0, "last_flush_s": 60.0}
    assert not due(100.0 + MAX_FLUSH_GAP_S - 0.1, **stall) and due(100.0 + MAX_FLUSH_GAP_S, **stall)
    # nothing handled since the last commit: nothing to publish
    assert not flush_due(
        50.0,
        idle=True,
        uncommitted=False,
        dirty_since=None,
        interval_s=0.5,
        last_flush_end=0.0,
        last_flush_s=0.0,
    )
