"""``fairfleet report``: the per-class quality / gap / ε-per-site report of a live or finished
fleet, read back from Kafka and the accountant (wiring over the bus; docs/report.md).

What the platform publishes, and what the report takes from each:

- the aggregator's ``checkpoints`` topic (its signed changelog, read as a restarting aggregator
  reads it, :func:`fairfleet.aggregator.checkpoint.read_checkpoint`): the rounds closed so far,
  each with the sites whose updates it accepted (or ``voided``), the strategy state (λ_c);
- the sites' ``stats`` topic (:func:`fairfleet.releases.scan_model`): each site's DP-noised
  held-out loss of the model it trained from, released with its update of that round.
  Per closed round, the losses of the round's accepted sites give the per-class estimates by
  :func:`fairfleet.releases.loss_report` — the aggregator's own computation for its
  ``fairfleet_fairness_*`` gauges (the raw data never leaves the sites; nothing else about
  quality is published);
- the ledger: each ledger's one ε (RDP, the figure `fairfleet budget` shows) from the
  accountant's ``/budgets``, or when the accountant does not answer, from a ledger rebuilt
  from ``privacy.events`` into a temporary database exactly as `fairfleet accountant rebuild`
  does (:func:`fairfleet.accountant.service.rebuild`, records verified against the config).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fairfleet.config import FleetConfig
from fairfleet.errors import BusError, ConfigError

Say = Callable[[str], None]


def pick_model(config: FleetConfig, model_id: str | None) -> str:
    """The model to report: the one given (an unknown id names the configured ones), or the
    fleet's only model."""
    if model_id is not None:
        return config.model(model_id).id
    ids = [m.id for m in config.models]
    if len(ids) != 1:
        raise ConfigError(f"The fleet trains {len(ids)} models; pick one with --model: {ids}")
    return ids[0]


def gamma_of(config: FleetConfig, model_id: str) -> float | None:
    """γ of the model's strategy if it takes one (the gap-constrained strategy), else None."""
    from fairfleet.aggregator.rounds import strategy_params

    value = strategy_params(config.model(model_id)).get("gamma")
    return None if value is None else float(value)


def read_ledger(config: FleetConfig, budgets_url: str | None, say: Say) -> dict[str, Any]:
    """Every ledger row (``Ledger.budgets``) and where it came from: the accountant's
    ``/budgets`` if it answers, else a rebuild of ``privacy.events`` into a temporary file."""
    import httpx

    from fairfleet.accountant.service import rebuild
    from fairfleet.bus import connect
    from fairfleet.signing import Verifier

    if budgets_url is not None:
        endpoint = budgets_url.rstrip("/")
        endpoint += "" if endpoint.endswith("/budgets") else "/budgets"
        try:
            response = httpx.get(endpoint, timeout=10.0)
            if response.status_code == 200:
                return {"source": f"accountant {endpoint}", "budgets": response.json()["budgets"]}
            why = f"answered {response.status_code}"
        except httpx.HTTPError as exc:
            why = f"not reachable ({type(exc).__name__})"
        say(f"accountant at {endpoint} {why}; replaying privacy.events")
    with tempfile.TemporaryDirectory(prefix="fairfleet-report-") as tmp:
        service = rebuild(
            connect(config.bus_url(), config.kafka.client_config()),
            Path(tmp) / "ledger.sqlite",
            config.policy_set(),
            config.kafka.topic_prefix,
            verifier=Verifier.from_config(config).check,
        )
        try:
            rows = service.ledger.budgets()
            skipped = len(service.skipped)
        finally:
            service.close()
    return {
        "source": "privacy.events replayed (as `fairfleet accountant rebuild`)",
        "budgets": rows,
        "skipped_records": skipped,
    }


def epsilon_per_site(config: FleetConfig, ledger: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per configured site: its ledgers' rows and the largest ε among them (with that ledger's
    limit and δ); a site with no ledger yet has ε 0."""
    out: dict[str, dict[str, Any]] = {}
    for site in sorted(config.site_classes()):
        rows = [r for r in ledger["budgets"] if r["site"] == site]
        top = max(rows, key=lambda r: r["epsilon_spent"], default=None)
        out[site] = {
            "epsilon_spent": 0.0 if top is None else top["epsilon_spent"],
            "epsilon_limit": None if top is None else top.get("epsilon_limit"),
            "delta": None if top is None else top.get("delta"),
            "ledgers": [
                {
                    k: r.get(k)
                    for k in ("unit", "source", "epsilon_spent", "epsilon_limit", "delta", "policy")
                }
                for r in rows
            ],
        }
    return out


def accepted_loss(
    by_version: dict[tuple[str, int], list[Any]], site: str, closed: dict[str, Any], staleness: int
) -> Any:
    """The loss ``site`` released with the update a closed round accepted: trained from version
    (announced − τ), the round's announced version being the one it released minus 1; the
    latest such release up to that round (sync: exactly the round's own, τ = 0)."""
    base = int(closed["version"]) - 1 - staleness
    found = [stat for stat in by_version.get((site, base), []) if stat.round <= closed["round"]]
    return max(found, key=lambda stat: stat.round, default=None)


def round_entries(
    config: FleetConfig, history: Any, by_round: dict[tuple[str, int], Any]
) -> list[dict[str, Any]]:
    """One entry per closed (not voided) round whose accepted sites released a loss: the
    aggregator's per-class estimates of that round, plus the view fields of the report."""
    from fairfleet.releases import loss_report

    by_version: dict[tuple[str, int], list[Any]] = {}
    for (site, _), stat in by_round.items():
        by_version.setdefault((site, stat.model_version), []).append(stat)
    site_classes = config.site_classes()
    entries = []
    for closed in history:
        if closed.get("voided"):
            continue
        stats = [
            loss
            for s, tau in zip(
                closed["sites"], closed.get("staleness") or [0] * len(closed["sites"]), strict=True
            )
            if (loss := accepted_loss(by_version, s, closed, int(tau))) is not None
        ]
        if not stats:
            continue
        quality = loss_report(stats, config)
        fleet = float(quality["fleet"])
        classes = {
            c: {
                "loss": e["shrunk"],
                "raw": e["raw"],
                "se": e["se"],
                "gap_to_fleet": e["shrunk"] - fleet,
                "sites": sorted(s.site for s in stats if site_classes[s.site] == c),
            }
            for c, e in quality["classes"].items()
        }
        entries.append(
            {
                "round": closed["round"],
                "version": min(s.model_version for s in stats),
                "released_version": closed["version"],
                "sites": list(closed["sites"]),
                "fleet_loss": fleet,
                "gap": quality["gap"]["debiased"],
                "classes": classes,
                "estimates": quality,
            }
        )
    return entries


def build_report(
    config: FleetConfig,
    model_id: str,
    budgets_url: str | None = None,
    timeout_s: float = 30.0,
    say: Say | None = None,
) -> dict[str, Any]:
    """The report's JSON document (see the module docstring); raises ConfigError/BusError with
    what is missing (broker unreachable, no checkpoint yet, unknown model)."""
    from fairfleet.aggregator.checkpoint import read_checkpoint
    from fairfleet.bus import Topics, connect
    from fairfleet.releases import scan_model
    from fairfleet.signing import aggregator_public_keys

    say = say or (lambda _msg: None)
    model_cfg = config.model(model_id)
    say(f"connecting to Kafka at {config.kafka.bootstrap}")
    bus = connect(config.bus_url(), config.kafka.client_config())
    try:
        reason = bus.unreachable(min(10.0, timeout_s))
        if reason is not None:
            raise BusError(f"Kafka at {config.kafka.bootstrap} is unreachable: {reason}")
        topic = Topics(config.kafka.topic_prefix).topic("checkpoints")
        try:
            bus.topic_config(topic)
        except BusError as exc:
            raise ConfigError(
                f"No checkpoint of model '{model_id}' yet: topic '{topic}' cannot be "
                f"read on {config.kafka.bootstrap} ({exc}). Has its aggregator started?"
            ) from exc
        say(f"reading the checkpoints of '{model_id}'")
        keys = aggregator_public_keys(config, model_id)
        ckpt = read_checkpoint(bus, topic, model_id, timeout_s, public_keys=keys or None)
    finally:
        bus.close()
    if ckpt is None:
        raise ConfigError(
            f"No checkpoint of model '{model_id}' on '{topic}' yet (has its aggregator "
            "started? it writes one before announcing round 0)."
        )
    say("reading the sites' loss releases (stats)")
    scanned = scan_model(config, model_id, timeout_s, models=False)
    entries = round_entries(config, ckpt.history, scanned.by_round)
    say("reading the privacy ledger")
    ledger = read_ledger(config, budgets_url, say)
    return {
        "fleet": config.fleet,
        "model": model_id,
        "strategy": {"name": model_cfg.strategy.name, "params": dict(model_cfg.strategy.params)},
        "gamma": gamma_of(config, model_id),
        "privacy": model_cfg.privacy.model_dump(mode="json"),
        "checkpoint": {
            "version": ckpt.version,
            "open_round": ckpt.round,
            "finished": ckpt.finished,
            "created_at": ckpt.created_at,
            "rounds_closed": len(ckpt.history),
            "rounds_voided": sum(1 for h in ckpt.history if h.get("voided")),
            "multipliers": ckpt.strategy_state.multipliers(),
        },
        "rounds": entries,
        "final": entries[-1] if entries else None,
        "epsilon": {
            "accountant": "rdp",
            "source": ledger["source"],
            "skipped_records": ledger.get("skipped_records", 0),
            "sites": epsilon_per_site(config, ledger),
        },
    }


def report_view(doc: dict[str, Any]) -> dict[str, Any]:
    """The quality view (:mod:`fairfleet.sim.quality_report`) of a report document."""
    sites = doc["epsilon"]["sites"]
    deltas = {v["delta"] for v in sites.values() if v["delta"] is not None}
    return {
        "entries": doc["rounds"],
        "final": doc["final"],
        "x_label": "round",
        "loss_label": "held-out loss (DP-noised site releases)",
        "epsilon_spent": {s: v["epsilon_spent"] for s, v in sites.items()},
        "epsilon_limit": {s: v["epsilon_limit"] for s, v in sites.items()},
        "delta": deltas.pop() if len(deltas) == 1 else None,
        "gamma": doc["gamma"],
    }


def write_fleet_report(doc: dict[str, Any], out_dir: str | Path) -> Path:
    """``report.json``, ``classes.png``, ``rounds.png`` and ``index.html``
    (``templates/fleet_report.html.j2``) in ``out_dir``."""
    from fairfleet.sim.quality_report import write_quality_report

    return write_quality_report(
        report_view(doc), doc, out_dir, "fleet_report.html.j2", "report.json"
    )
