"""docker-compose.yml, statically (no Docker engine here): structure, commands, mounts, ports, env.

`docker compose config` would be the authoritative parser; it runs only where the compose plugin
is installed (it is not on this machine: `docker compose` is an unknown command), so that one
check skips with the reason; everything else is checked here against the fleet config and the CLI.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from deploykit import (
    COMPOSE,
    CONFIG_IN_CONTAINER,
    EXAMPLE,
    PROM_CONFIG,
    REPO,
    compose,
    example_config,
)
from typer.testing import CliRunner

from fairfleet.cli import app

FAIRFLEET_IMAGE = re.compile(r"^fairfleet:[0-9][\w.-]*$")


def _services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def _fairfleet_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in _services().items() if FAIRFLEET_IMAGE.match(str(s.get("image", "")))}


def _subcommand(command: list[str]) -> list[str]:
    """The command path (words before the first option), e.g. ['site', 'run']."""
    words = []
    for word in command:
        if word.startswith("-"):
            break
        words.append(word)
    return words


def _option(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def _metrics_port(command: list[str]) -> int | None:
    cfg = example_config()
    path = _subcommand(command)
    if path == ["accountant", "run"]:
        return cfg.accountant.metrics_port
    if path == ["aggregator", "run"]:
        return cfg.model(_option(command, "--model") or "").metrics_port
    if path == ["site", "run"]:
        return cfg.site(_option(command, "--site") or "").metrics_port
    return None


def test_services_and_images() -> None:
    services = _services()
    cfg = example_config()
    expected = {"kafka", "topics", "accountant", "prometheus", "grafana"}
    expected |= {f"aggregator-{m.id}" for m in cfg.models} | {f"site-{s.id}" for s in cfg.sites}
    assert set(services) == expected
    for name, svc in services.items():
        image = str(svc.get("image", ""))
        assert image and not image.endswith(":latest") and ":" in image, (
            f"{name}: pin the image ({image!r})"
        )
    ours = _fairfleet_services()
    assert set(ours) == expected - {"kafka", "prometheus", "grafana"}
    for name, svc in ours.items():
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile", name
        assert (REPO / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        assert isinstance(svc["command"], list), f"{name}: use the exec (list) form"
    assert services["kafka"]["image"].startswith("apache/kafka:")


def test_pulled_images_are_pinned_by_tag_and_digest() -> None:
    """A tag can be re-pushed; the digest cannot. The image we build is named by our version."""
    pulled = {n: str(s["image"]) for n, s in _services().items() if "build" not in s}
    assert set(pulled) == {"kafka", "prometheus", "grafana"}
    for name, image in pulled.items():
        assert re.fullmatch(r"[a-z0-9./-]+:[A-Za-z0-9._-]+@sha256:[0-9a-f]{64}", image), (
            f"{name}: pin {image!r} as name:tag@sha256:<digest>"
        )


def test_one_aggregator_per_model_and_one_agent_per_site() -> None:
    cfg = example_config()
    commands = [svc["command"] for svc in _fairfleet_services().values()]
    models = sorted(
        _option(c, "--model") or "" for c in commands if _subcommand(c) == ["aggregator", "run"]
    )
    sites = sorted(
        _option(c, "--site") or "" for c in commands if _subcommand(c) == ["site", "run"]
    )
    assert models == sorted(m.id for m in cfg.models)
    assert sites == sorted(s.id for s in cfg.sites)
    assert sum(_subcommand(c) == ["accountant", "run"] for c in commands) == 1
    assert sum(_subcommand(c) == ["topics", "create"] for c in commands) == 1


@pytest.mark.parametrize("service", sorted(_fairfleet_services()))
def test_command_exists_in_the_cli(service: str) -> None:
    command = _fairfleet_services()[service]["command"]
    res = CliRunner().invoke(app, [*_subcommand(command), "--help"], terminal_width=200)
    assert res.exit_code == 0, (
        f"`fairfleet {' '.join(_subcommand(command))}` is not a command:\n{res.output}"
    )
    for word in command:
        if word.startswith("--"):
            assert word in res.output, (
                f"{service}: `{' '.join(_subcommand(command))}` has no option {word}"
            )
    assert _option(command, "--config") == CONFIG_IN_CONTAINER


@pytest.mark.parametrize("service", sorted(_services()))
def test_every_bind_mount_exists(service: str) -> None:
    svc = _services()[service]
    declared = set((compose().get("volumes") or {}).keys())
    for vol in svc.get("volumes", []):
        src, target, *mode = vol.split(":")
        assert PurePosixPath(target).is_absolute(), vol
        if src.startswith((".", "/")):
            assert (REPO / src).exists(), f"{service}: mounted {src} does not exist"
            assert mode == ["ro"], f"{service}: mount {src} read-only"
        else:
            assert src in declared, f"{service}: named volume {src} is not declared"


@pytest.mark.parametrize("service", sorted(_fairfleet_services()))
def test_config_and_keys_are_mounted_where_the_command_reads_them(service: str) -> None:
    svc = _fairfleet_services()[service]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in svc.get("volumes", [])}
    assert mounts.get(CONFIG_IN_CONTAINER) == "./" + str(EXAMPLE.relative_to(REPO))
    site_id = _option(svc["command"], "--site")
    model_id = _option(svc["command"], "--model")
    key_mounts = {t for t in mounts if t.startswith("/etc/fairfleet/keys/")}
    cfg = example_config()
    if site_id is not None:
        key_file = cfg.site(site_id).private_key_file
    elif model_id is not None:
        ident = cfg.model(model_id).aggregator
        key_file = ident.private_key_file if ident else None
    elif svc["command"][:2] == ["accountant", "run"]:
        key_file = cfg.accountant.private_key_file
    else:
        assert not key_mounts, f"{service} must not see any private key"
        return
    assert key_file  # every signing service has its (DEMO ONLY) key
    target = str(PurePosixPath(CONFIG_IN_CONTAINER).parent / key_file)
    assert key_mounts == {target}, f"{service}: mount exactly its own key at {target}"
    assert (REPO / mounts[target]).resolve() == cfg.resolve_path(key_file)


@pytest.mark.parametrize("service", sorted(_fairfleet_services()))
def test_ports_match_the_config_and_prometheus(service: str) -> None:
    svc = _fairfleet_services()[service]
    port = _metrics_port(svc["command"])
    targets = _scrape_targets()
    if port is None:  # the one-shot topic creator serves nothing
        assert "ports" not in svc
        assert not any(t.startswith(f"{service}:") for t in targets)
        return
    assert [str(p) for p in svc["ports"]] == [f"127.0.0.1:{port}:{port}"]  # this host only
    assert f"{service}:{port}" in targets
    health = svc["healthcheck"]["test"]  # every long-running service, site agents included
    assert f"127.0.0.1:{port}/healthz" in " ".join(health)


def test_every_service_has_a_healthcheck_that_fails_when_healthz_is_unhealthy() -> None:
    """Run each service's healthcheck command against a /healthz that is up, then unhealthy."""
    from prometheus_client import CollectorRegistry

    from fairfleet.metrics import Health, serve

    kafka: dict[str, str | None] = {"problem": None}
    server = serve(
        CollectorRegistry(), health=Health(60, probe=lambda: kafka["problem"], probe_every_s=0)
    )
    try:
        checked = 0
        for name, svc in _fairfleet_services().items():
            port = _metrics_port(svc["command"])
            if port is None:
                continue
            check = svc.get("healthcheck")
            assert check, f"{name} has no healthcheck"
            kind, *argv = check["test"]
            assert kind == "CMD" and argv[0] == "python", f"{name}: {check['test']}"
            assert int(check.get("retries", 3)) >= 1 and check.get("interval"), name
            local = [a.replace(f"127.0.0.1:{port}/", f"127.0.0.1:{server.port}/") for a in argv[1:]]
            for problem, expected in ((None, 0), ("Connection refused", 1)):
                kafka["problem"] = problem
                res = subprocess.run([sys.executable, *local], capture_output=True, timeout=30)
                assert res.returncode == expected, (
                    f"{name} with Kafka problem {problem!r}: {res.stderr!r}"
                )
            checked += 1
        assert checked == len(_fairfleet_services()) - 1  # all but the one-shot topic creator
    finally:
        server.close()


def _scrape_targets() -> set[str]:
    conf = yaml.safe_load(PROM_CONFIG.read_text())
    return {
        t
        for job in conf["scrape_configs"]
        if job["job_name"].startswith("fairfleet-")
        for sc in job["static_configs"]
        for t in sc["targets"]
    }


def test_prometheus_scrapes_every_service_and_nothing_else() -> None:
    expected = {
        f"{n}:{p}" for n, s in _fairfleet_services().items() if (p := _metrics_port(s["command"]))
    }
    assert _scrape_targets() == expected
    prom = _services()["prometheus"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    conf = yaml.safe_load(PROM_CONFIG.read_text())
    for job in conf["scrape_configs"]:
        for sc in job["static_configs"]:
            # target labels must not shadow labels the metrics carry themselves
            assert not set(sc.get("labels", {})) & {"site", "model", "service", "class", "source"}


def _env_vars() -> dict[str, str]:
    found: dict[str, str] = {}
    for svc in _services().values():
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        found.update({k: str(v) for k, v in env.items() if k.startswith("FAIRFLEET_")})
    docker = (REPO / "deploy" / "Dockerfile").read_text()
    found.update(dict(re.findall(r"\b(FAIRFLEET_[A-Z0-9_]+)=(\S+)", docker)))
    return found


def _field_for(var: str) -> tuple[str, ...]:
    """The config field an env var sets, or AssertionError naming the bad segment."""
    from pydantic import BaseModel

    from fairfleet.config import FleetConfig

    model: type[BaseModel] = FleetConfig
    parts = var.removeprefix("FAIRFLEET_").lower().split("__")
    for i, part in enumerate(parts):
        assert part in model.model_fields, f"{var}: no config field {'.'.join(parts[: i + 1])}"
        ann = model.model_fields[part].annotation
        if i < len(parts) - 1:
            assert isinstance(ann, type) and issubclass(ann, BaseModel), (
                f"{var}: {part} has no sub-fields"
            )
            model = ann
    return tuple(parts)


def test_every_fairfleet_env_var_is_a_config_field(monkeypatch: pytest.MonkeyPatch) -> None:
    env = _env_vars()
    assert "FAIRFLEET_KAFKA__BOOTSTRAP" in env
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    cfg = example_config()  # the overrides validate together with the example
    for var, value in env.items():
        obj: Any = cfg
        for part in _field_for(var):
            obj = getattr(obj, part)
        assert str(obj) == value, f"{var}={value} did not reach the config (got {obj!r})"


def test_kafka_matches_the_notes_and_the_bootstrap() -> None:
    kafka = _services()["kafka"]
    env = kafka["environment"]
    for key in (
        "KAFKA_NODE_ID",
        "KAFKA_PROCESS_ROLES",
        "KAFKA_LISTENERS",
        "KAFKA_ADVERTISED_LISTENERS",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
        "KAFKA_CONTROLLER_QUORUM_VOTERS",
        "KAFKA_CONTROLLER_LISTENER_NAMES",
        "KAFKA_INTER_BROKER_LISTENER_NAME",
        "CLUSTER_ID",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert key in env, key
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    bootstrap = _env_vars()["FAIRFLEET_KAFKA__BOOTSTRAP"]
    assert f"PLAINTEXT://{bootstrap}" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert (
        env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    )  # the topics job creates them explicitly
    from fairfleet.bus.topics import MAX_MESSAGE_BYTES

    assert int(env["KAFKA_MESSAGE_MAX_BYTES"]) >= MAX_MESSAGE_BYTES


def test_start_order() -> None:
    services = _services()
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        for dep in deps:
            assert dep in services, f"{name} depends on unknown {dep}"
    assert services["topics"]["depends_on"] == {"kafka": {"condition": "service_healthy"}}
    assert services["topics"]["restart"] == "no"
    assert "healthcheck" in services["kafka"]
    for name, svc in _fairfleet_services().items():
        if name != "topics":
            assert svc["depends_on"] == {
                "topics": {"condition": "service_completed_successfully"}
            }, name


def test_docker_compose_config_parses_it(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip(
            "no docker CLI on this machine; the static checks above stand in for `docker compose config`"
        )
    probe = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip(
            "the docker CLI here has no compose plugin (`docker compose` is an unknown command), "
            "so `docker compose config` cannot run; the static checks above stand in for it"
        )
    res = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stderr


def test_every_published_port_is_bound_to_loopback_and_grafana_needs_a_password() -> None:
    """Issue 12: compose published Kafka PLAINTEXT and the metrics ports on all host interfaces,
    and Grafana's admin password defaulted to ``admin`` with anonymous viewing on."""
    for name, svc in _services().items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond this host"
    env = _services()["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "GF_AUTH_ANONYMOUS_ORG_ROLE" not in env
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")  # required
