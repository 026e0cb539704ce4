"""Live: the real broker, the services as processes (`fairfleet up`'s launcher) and a REAL
Prometheus server scraping them with the shipped alert rules; after a few rounds, Prometheus's
HTTP API holds the class gap, the ε spent per site and the round counters, with sane values.

The fleet is the example's `failure` model and its three simulated plants (one per site class),
with fewer rounds and a shorter deadline; ports, topics, keys and the ledger are per test.
plant-c's policy admits DENIED_AT - 1 rounds (its releases all land on the same windows), so
the run also shows the privacy figures under a denial: every site's ε series never decreases,
equals `fairfleet budget --json` at one instant, and the pre-denial alert fires before the
first denial.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

pytestmark = [pytest.mark.kafka, pytest.mark.prometheus, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "fairfleet.example.yaml"
RULES = REPO / "deploy" / "prometheus" / "rules" / "fairfleet.yml"
MODEL = "failure"
SITES = ("plant-a", "plant-b", "plant-c")  # classes modern, retrofit, legacy
ROUNDS_WANTED = 3
DENIED_SITE = "plant-c"
DENIED_AT = 6  # plant-c's 6th reservation is denied (the policy sits between 5 and 6 rounds' ε),
# two rounds after the ROUNDS_WANTED checks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fleet_config(tmp_path: Path, prefix: str) -> Path:
    """The example, cut down to one model and its three simulated sites."""
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    model = next(m for m in data["models"] if m["id"] == MODEL)
    # every round waits for all three sites (min_sites; re-announced, never voided, while they
    # start up) and then lasts its deadline (a quorum above the three sites is never met
    # early), so the pre-denial gauge, raised when plant-c's last affordable release is
    # granted, stands for a whole round (~15 scrapes) before the next reservation is denied:
    # with rounds closed as soon as all three reported, the two came within one 100 ms scrape
    # under load and the alert could not be seen first. After the denial the open round waits.
    model["rounds"] = {
        "mode": "sync",
        "rounds": 20,
        "deadline_s": 1.5,
        "min_sites": 3,
        "quorum": 4,
        "max_reannouncements": 1000,
    }
    data["models"] = [model]
    data["sites"] = [s for s in data["sites"] if s["id"] in SITES]
    data["policies"]["sites"] = {k: v for k, v in data["policies"]["sites"].items() if k in SITES}
    data["policies"]["sites"][DENIED_SITE] = {
        "epsilon_max": _limit_between_rounds(model, DENIED_AT),
        "delta": 1e-5,
        "unit": "observation",
    }
    data["kafka"]["topic_prefix"] = prefix
    data["accountant"]["db"] = str(tmp_path / "ledger.sqlite")
    data["state_dir"] = str(tmp_path / "state")
    shutil.copytree(REPO / "deploy" / "keys", tmp_path / "keys")  # DEMO-ONLY keys of the example
    for site in data["sites"]:  # relative to the config file; the temp config sits next to keys/
        assert site["private_key_file"] == f"keys/{site['id']}.key"
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _rounds_epsilon(model: dict[str, Any], rounds: int, delta: float = 1e-5) -> float:
    """RDP ε of ``rounds`` of the model's round release composed on the same windows."""
    import dp_accounting

    from fairfleet.messages import LocalTrainingPlan, PrivacyPlan
    from fairfleet.privacy.accounting import epsilon
    from fairfleet.site_agent.release import round_event

    plan, training = PrivacyPlan(**model["privacy"]), LocalTrainingPlan(**model["training"])
    assert plan.unit == "observation"  # the loss release's event then does not depend on m
    return epsilon(
        [dp_accounting.SelfComposedDpEvent(round_event(plan, training, 1), rounds)], delta, "rdp"
    )


def _limit_between_rounds(model: dict[str, Any], denied_at: int) -> float:
    return (_rounds_epsilon(model, denied_at - 1) + _rounds_epsilon(model, denied_at)) / 2


class PromAPI:
    def __init__(self, url: str) -> None:
        self.url = url
        # The fleet keeps running while the test reads: queries that compare series evaluate at
        # one fixed instant (``at``), or they could see two different rounds.
        self.at: float | None = None

    def query(self, expr: str) -> list[dict[str, Any]]:
        params: dict[str, str | float] = {"query": expr}
        if self.at is not None:
            params["time"] = self.at
        r = httpx.get(f"{self.url}/api/v1/query", params=params, timeout=5)
        r.raise_for_status()
        body = r.json()
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def values(self, expr: str, label: str) -> dict[str, float]:
        return {s["metric"].get(label, ""): float(s["value"][1]) for s in self.query(expr)}

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def samples(self, expr: str, label: str) -> dict[str, list[tuple[float, float]]]:
        """Raw (time, value) samples of a range selector, per value of ``label``."""
        return {
            s["metric"].get(label, ""): [(float(t), float(v)) for t, v in s["values"]]
            for s in self.query(expr)
        }


@contextlib.contextmanager
def _prometheus(tmp_path: Path, fleet: Any) -> Iterator[PromAPI]:
    exe = shutil.which("prometheus")
    assert exe, (
        "prometheus not found on PATH: install Debian's prometheus package (make system-deps)"
    )
    jobs = {
        "accountant": "fairfleet-accountant",
        "aggregator": "fairfleet-aggregator",
        "site": "fairfleet-site-agent",
    }
    # The accountant every 100 ms and the rules every 50 ms: a site's next reservation follows its
    # last granted release by the aggregator's close-and-announce time (0.3-2 s here), and the
    # pre-denial alert must be seen in between; the other services every second. A scrape that
    # times out marks the accountant's series stale: instant checks use _fresh_instant.
    scrape = [
        {
            "job_name": job,
            **(
                {"scrape_interval": "100ms", "scrape_timeout": "100ms"}
                if kind == "accountant"
                else {}
            ),
            "static_configs": [{"targets": [f"127.0.0.1:{s.port}" for s in fleet.of_kind(kind)]}],
        }
        for kind, job in jobs.items()
    ]
    conf = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "50ms"},
        "rule_files": [str(RULES)],
        "scrape_configs": scrape,
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(conf))
    port = _free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            exe,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "Prometheus did not become ready in 60 s"
            time.sleep(0.3)
        yield PromAPI(url)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


@pytest.fixture
def live(tmp_path: Path, kafka_bootstrap: str) -> Iterator[tuple[Any, PromAPI, Any]]:
    from fairfleet.bus import Topics, connect
    from fairfleet.config import load_config
    from fairfleet.launcher import launch

    prefix = f"live{uuid.uuid4().hex[:8]}."
    config = _fleet_config(tmp_path, prefix)
    cfg = load_config(config)
    connect(f"kafka://{kafka_bootstrap}").create_topics(Topics(prefix).specs(cfg.kafka.partitions))
    env = {"FAIRFLEET_KAFKA__BOOTSTRAP": kafka_bootstrap}
    fleet = launch(
        config, log_dir=tmp_path / "logs", env=env, extra_args={"aggregator": ["--keep-running"]}
    )
    try:
        with _prometheus(tmp_path, fleet) as prom:
            yield fleet, prom, cfg
    finally:
        fleet.stop()


def _wait_for_rounds(prom: PromAPI, fleet: Any, timeout_s: float = 300) -> float:
    deadline = time.monotonic() + timeout_s
    while True:
        failed = fleet.failed()
        assert not failed, "\n\n".join(f"{s.name} failed:\n{s.log_tail(30)}" for s in failed)
        closed = prom.scalar(f'sum(fairfleet_aggregator_rounds_total{{model="{MODEL}"}})')
        if closed is not None and closed >= ROUNDS_WANTED:
            time.sleep(2.5)  # two more scrapes, so every service's latest values are in
            return closed
        if time.monotonic() > deadline:
            logs = "\n\n".join(f"{s.name}:\n{s.log_tail(20)}" for s in fleet.services)
            pytest.fail(f"only {closed} rounds closed in {timeout_s:g} s\n{logs}")
        time.sleep(1)


def _wait_for_denial(prom: PromAPI, fleet: Any, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    expr = f'fairfleet_privacy_denials_total{{site="{DENIED_SITE}",reason="over_budget"}} > 0'
    while not prom.query(expr):
        failed = fleet.failed()
        assert not failed, "\n\n".join(f"{s.name} failed:\n{s.log_tail(30)}" for s in failed)
        assert time.monotonic() < deadline, f"{DENIED_SITE} was not denied within {timeout_s:g} s"
        time.sleep(0.5)
    time.sleep(1.0)  # a few more scrapes and rule evaluations


def _fresh_instant(prom: PromAPI) -> float:
    """Now, once the accountant's latest scrape succeeded (a timed-out one leaves its series stale)."""
    for _ in range(100):
        prom.at = at = time.time()
        fresh = prom.query('up{job="fairfleet-accountant"} == 1')
        prom.at = None
        if fresh:
            return at
        time.sleep(0.05)
    pytest.fail("no successful scrape of the accountant in 5 s")


def _budget_json(url: str) -> dict[str, Any]:
    """`fairfleet budget --json` against the live accountant (the CLI a user runs)."""
    import json

    from typer.testing import CliRunner

    from fairfleet.cli import app

    out = CliRunner().invoke(app, ["budget", "--url", url, "--json"])
    assert out.exit_code == 0, out.output
    return dict(json.loads(out.stdout))


def _privacy_figures_agree(prom: PromAPI, fleet: Any, started: float) -> None:
    """Every site's ε series never decreased over the run; at one instant it equals `fairfleet
    budget --json`; the pre-denial alert fired before the first denial (and the denial alert)."""
    window = "15m"  # longer than the run: every sample Prometheus took since the fleet started
    series = prom.samples(f"fairfleet_privacy_epsilon_spent[{window}]", "site")
    assert set(SITES) <= set(series), series
    for site, samples in series.items():
        values = [v for _, v in samples]
        assert len(values) > 20, (site, len(values))
        drops = [(a, b) for a, b in itertools.pairwise(values) if b < a]
        assert not drops, f"ε of {site} decreased: {drops[:5]}"
        assert values[-1] > 0

    # at one instant: nothing changed in the ledger across a Prometheus scrape -> equal figures
    for _ in range(10):
        before = _budget_json(fleet.accountant.url)
        time.sleep(0.75)  # several scrapes
        at = _fresh_instant(prom)
        after = _budget_json(fleet.accountant.url)
        if before == after:
            break
    else:
        pytest.fail("the ledger kept changing; no stable instant to compare")
    prom.at = at
    gauge = {
        (s["metric"]["site"], s["metric"]["source"], s["metric"]["unit"]): float(s["value"][1])
        for s in prom.query("fairfleet_privacy_epsilon_spent")
    }
    rows = {(r["site"], r["source"], r["unit"]): r for r in after["budgets"]}
    assert set(gauge) == set(rows)
    for key, row in rows.items():
        assert gauge[key] == row["epsilon_spent"], (key, gauge[key], row)  # exactly the same number
    entries = {
        e["metric"]["site"]: e["metric"]["policy"]
        for e in prom.query("fairfleet_privacy_policy_info == 1")
    }
    assert entries == {
        "plant-a": "defaults",
        "plant-b": "classes.retrofit",
        DENIED_SITE: f"sites.{DENIED_SITE}",
    }
    assert entries == {r["site"]: r["policy"] for r in rows.values()}  # one resolver, one answer
    nxt = prom.values("fairfleet_privacy_epsilon_next", "site")
    assert all(nxt[r["site"]] == r["epsilon_next"] for r in rows.values())

    # the pre-denial alert fired before the first denial, and the denial alert fired too
    warned = prom.samples(
        f'ALERTS{{alertname="PrivacyNextReleaseWouldBeDenied",alertstate="firing"}}[{window}]',
        "site",
    )
    denials = prom.samples(
        f'fairfleet_privacy_denials_total{{site="{DENIED_SITE}",reason="over_budget"}}[{window}]',
        "site",
    )
    assert set(warned) == {DENIED_SITE}, warned
    first_warning = warned[DENIED_SITE][0][0]
    first_denial = next(t for t, v in denials[DENIED_SITE] if v > 0)
    assert first_warning < first_denial, (first_warning, first_denial)
    denied_alert = prom.samples(
        f'ALERTS{{alertname="PrivacyReleasesDenied",alertstate="firing"}}[{window}]', "site"
    )
    assert DENIED_SITE in denied_alert
    row = rows[(DENIED_SITE, "line-1", "observation")]
    assert row["events_committed"] == DENIED_AT - 1
    assert row["epsilon_spent"] <= row["epsilon_limit"] < row["epsilon_next"]
    print(  # the numbers for the record (pytest -s)
        f"\n{DENIED_SITE}: spent {row['epsilon_spent']:.4f} next {row['epsilon_next']:.4f} limit "
        f"{row['epsilon_limit']:.4f} used {row['budget_used_ratio']:.1%}; pre-denial alert at "
        f"{first_warning - started:.2f} s, first denial at {first_denial - started:.2f} s "
        f"(lead {first_denial - first_warning:.2f} s); samples per site "
        f"{ {k: len(v) for k, v in series.items()} }; figures at {at:.3f}: "
        f"{ {k[0]: v for k, v in gauge.items()} }"
    )
    prom.at = None


def test_prometheus_sees_rounds_fairness_and_privacy(live: tuple[Any, PromAPI, Any]) -> None:
    fleet, prom, cfg = live
    started = time.time()
    _wait_for_rounds(prom, fleet)
    # while rounds still flow (after plant-c's denial the open round waits for its deadline, and
    # the class losses of the sites that did report move ahead of the last round's gap)
    prom.at = _fresh_instant(prom)  # every comparison below reads one consistent instant
    closed = prom.scalar(f'sum(fairfleet_aggregator_rounds_total{{model="{MODEL}"}})')
    assert closed is not None

    # every service is scraped and up
    up = prom.query('up{job=~"fairfleet-.*"}')
    assert len(up) == 1 + 1 + len(SITES)
    assert all(s["value"][1] == "1" for s in up), up

    # round counters: closed rounds, the open round and the model version move together
    assert closed >= ROUNDS_WANTED
    current = prom.scalar(f'fairfleet_aggregator_current_round{{model="{MODEL}"}}')
    version = prom.scalar(f'fairfleet_aggregator_model_version{{model="{MODEL}"}}')
    participants = prom.scalar(f'fairfleet_aggregator_round_participants{{model="{MODEL}"}}')
    assert current is not None and current >= closed - 1
    assert version is not None and 1 <= version <= current + 1
    assert participants is not None and 2 <= participants <= len(SITES)
    joined = prom.values(f'fairfleet_site_rounds_joined_total{{model="{MODEL}"}}', "site")
    assert set(joined) == set(SITES) and sum(joined.values()) >= 2 * ROUNDS_WANTED

    # fairness: a noisy and a debiased loss per class; the gap is the bias-corrected range of the
    # noisy class estimates, max(0, range - bias), so 0 <= gap <= range; the bound is gamma
    noisy = prom.values(
        f'fairfleet_fairness_class_loss{{model="{MODEL}",estimate="noisy"}}', "class"
    )
    debiased = prom.values(
        f'fairfleet_fairness_class_loss{{model="{MODEL}",estimate="debiased"}}', "class"
    )
    stderr = prom.values(f'fairfleet_fairness_class_loss_stderr{{model="{MODEL}"}}', "class")
    assert set(noisy) == set(debiased) == set(stderr) == {"modern", "retrofit", "legacy"}, noisy
    assert all(math.isfinite(v) for v in [*noisy.values(), *debiased.values()])
    assert all(v > 0 for v in stderr.values())
    gap = prom.scalar(f'fairfleet_fairness_gap{{model="{MODEL}"}}')
    assert gap is not None and math.isfinite(gap)
    assert 0 <= gap <= max(noisy.values()) - min(noisy.values()) + 1e-9
    worst = prom.values(f'fairfleet_fairness_worst_class{{model="{MODEL}"}} == 1', "class")
    assert len(worst) == 1, worst
    assert prom.scalar(f'fairfleet_fairness_gap_bound{{model="{MODEL}"}}') == pytest.approx(
        cfg.model(MODEL).gamma
    )

    # privacy: every site has spent some epsilon, within its policy, and the ratio is spent/limit
    spent = prom.values("fairfleet_privacy_epsilon_spent", "site")
    limit = prom.values("fairfleet_privacy_epsilon_limit", "site")
    assert set(SITES) <= set(spent), spent
    for site in SITES:
        assert limit[site] == pytest.approx(cfg.policy_for(site, "observation").policy.epsilon_max)
        assert 0 < spent[site] <= limit[site]
    ratio_error = prom.scalar(
        "max(abs(fairfleet_privacy_budget_used_ratio - fairfleet_privacy_epsilon_spent "
        "/ fairfleet_privacy_epsilon_limit))"
    )
    assert ratio_error is not None and ratio_error < 1e-9
    assert prom.values(
        f'fairfleet_site_privacy_enabled{{model="{MODEL}"}}', "site"
    ) == dict.fromkeys(SITES, 1.0)
    site_side = prom.values(f'fairfleet_site_epsilon_spent{{model="{MODEL}"}}', "site")
    assert set(site_side) == set(SITES) and all(0 < v <= limit[k] for k, v in site_side.items())

    # the shipped rules load in a real server, and none of the "broken" alerts fire
    rules = httpx.get(f"{prom.url}/api/v1/rules", timeout=5).json()["data"]["groups"]
    loaded = {r["name"]: r["health"] for g in rules for r in g["rules"]}
    assert {
        "ServiceDown",
        "FairnessGapAboveBound",
        "PrivacyBudgetExhausted",
        "PrivacyNextReleaseWouldBeDenied",
        "PrivacyReleasesDenied",
    } <= set(loaded)
    assert set(loaded.values()) == {"ok"}, loaded
    firing = prom.query(
        'ALERTS{alertname=~"ServiceDown|SitePrivacyDisabled|PrivacyBudgetExhausted"}'
    )
    assert firing == [], firing

    prom.at = None
    _wait_for_denial(prom, fleet)
    _privacy_figures_agree(prom, fleet, started)
    prom.at = _fresh_instant(prom)
    assert (
        prom.query('ALERTS{alertname=~"ServiceDown|SitePrivacyDisabled|PrivacyBudgetExhausted"}')
        == []
    )
    _dashboards_evaluate(prom)

    fleet.stop()
    assert fleet.failed() == [], [s.name for s in fleet.failed()]  # clean SIGTERM exits


# Panels that must show data once a few rounds ran (others legitimately stay empty: denials,
# rejects, late updates, staleness of a sync model, ...).
MUST_SHOW = {
    "fleet-overview.json": {
        "Current round",
        "Model version",
        "Participants (last closed round)",
        "Services up",
    },
    "fairness.json": {
        "Class loss gap vs gamma",
        "Worst class now",
        "Noisy vs debiased class loss",
        "Debiased loss of class $class (95% band)",
    },
    "privacy.json": {
        "Budget used (spent / epsilon_max)",
        "Epsilon spent vs policy limit",
        "Epsilon remaining",
        "Policy entry that sets each limit",
        "Denials per hour, by reason",
    },
    "pipeline-health.json": {
        "Consumer lag (messages)",
        "Round open time vs deadline",
        "Scrape targets up",
    },
}


def _dashboards_evaluate(prom: PromAPI) -> None:
    """Every dashboard query (variables filled in) is valid PromQL for the real server, and the
    core panels show data from the live services."""
    import json

    for name, must in MUST_SHOW.items():
        board = json.loads((REPO / "deploy" / "grafana" / "dashboards" / name).read_text())
        empty = []
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                expr = (
                    target["expr"]
                    .replace("$model", MODEL)
                    .replace("$site", ".*")
                    .replace("$class", ".*")
                )
                result = prom.query(expr)  # raises on a PromQL error
                if not result and panel["title"] in must:
                    empty.append(f"{panel['title']}: {expr}")
        assert not empty, f"{name}: panels without data: {empty}"
