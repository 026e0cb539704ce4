"""`fairfleet preflight CONFIG`: the config check plus live reachability (cf. nvflare preflight_check).

Checks, in order: the config (``fairfleet config check``, paths and key files included), the
broker answers (metadata within ``--timeout-s``), every fleet topic exists, the accountant's
``/healthz`` answers. Each check prints one ``ok``/``FAIL`` line on stdout; exit 1 if any fails.
Nothing is created or started.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import typer

from fairfleet.cli._options import JsonObject


def _check_broker(cfg: Any, timeout_s: float) -> tuple[list[dict[str, Any]], set[str] | None]:
    from confluent_kafka.admin import AdminClient

    conf = {
        "bootstrap.servers": cfg.kafka.bootstrap,
        **cfg.kafka.client_config(),
        "socket.timeout.ms": int(timeout_s * 1000),
        "log_level": 0,
    }
    try:
        meta = AdminClient(conf).list_topics(timeout=timeout_s)
    except Exception as exc:  # KafkaException: broker down, auth failure, timeout
        detail = str(exc.args[0]) if exc.args else str(exc)
        return [
            {
                "check": "broker",
                "ok": False,
                "detail": f"{cfg.kafka.bootstrap} did not answer within {timeout_s:g} s: {detail}",
            }
        ], None
    names = set(meta.topics)
    return [
        {
            "check": "broker",
            "ok": True,
            "detail": f"{cfg.kafka.bootstrap}: {len(meta.brokers)} broker(s)",
        }
    ], names


def _check_topics(cfg: Any, existing: set[str]) -> dict[str, Any]:
    from fairfleet.bus import Topics

    wanted = [t.name for t in Topics(cfg.kafka.topic_prefix).specs(cfg.kafka.partitions)]
    missing = [t for t in wanted if t not in existing]
    if missing:
        return {
            "check": "topics",
            "ok": False,
            "detail": f"{len(missing)} of {len(wanted)} missing: {', '.join(missing)} "
            "(create them: fairfleet topics create --config FILE)",
        }
    return {"check": "topics", "ok": True, "detail": f"all {len(wanted)} exist"}


def _check_accountant(url: str, timeout_s: float) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            body = resp.read(4096).decode(errors="replace")
            status = resp.status
    except Exception as exc:  # refused, timeout, HTTP error
        return {"check": "accountant", "ok": False, "detail": f"{url}: {exc}"}
    ok = status == 200
    return {"check": "accountant", "ok": ok, "detail": f"{url}: HTTP {status} {body.strip()[:120]}"}


def preflight(
    config: Path, accountant_url: str | None, timeout_s: float, paths: bool
) -> list[dict[str, Any]]:
    """Every check's outcome as ``{check, ok, detail}`` (the live checks need a valid config)."""
    from fairfleet.cli.config import check_file
    from fairfleet.config import load_config

    report = check_file(config, paths=paths)
    results: list[dict[str, Any]] = [
        {
            "check": "config",
            "ok": report.valid,
            "detail": "valid" if report.valid else "; ".join(report.problems),
        }
    ]
    if not report.valid:
        return results
    cfg = load_config(config)
    broker, existing = _check_broker(cfg, timeout_s)
    results += broker
    if existing is not None:
        results.append(_check_topics(cfg, existing))
    if accountant_url is None:
        host = cfg.metrics_host if cfg.metrics_host not in ("0.0.0.0", "::") else "127.0.0.1"
        accountant_url = f"http://{host}:{cfg.accountant.metrics_port}/healthz"
    results.append(_check_accountant(accountant_url, timeout_s))
    return results


def preflight_cmd(
    config: Path = typer.Argument(..., help="The fleet YAML file."),
    accountant: str | None = typer.Option(
        None,
        "--accountant",
        help="The accountant's /healthz URL (default: metrics_host:accountant.metrics_port).",
    ),
    timeout_s: float = typer.Option(5.0, "--timeout-s", help="Per live check."),
    skip_paths: bool = typer.Option(False, "--skip-paths", help="As in `config check`."),
    as_json: JsonObject = False,
) -> None:
    """Check CONFIG and that the broker, the topics and the accountant answer (exit 1 if not)."""
    results = preflight(config, accountant, timeout_s, not skip_paths)
    ok = all(r["ok"] for r in results)
    if as_json:
        typer.echo(json.dumps({"file": str(config), "ok": ok, "checks": results}))
    else:
        for r in results:
            typer.echo(f"{'ok  ' if r['ok'] else 'FAIL'} {r['check']:<10} {r['detail']}")
    if not ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("preflight")(preflight_cmd)
