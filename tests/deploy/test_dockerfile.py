"""deploy/Dockerfile, statically: multi-stage, non-root, CPU torch pinned like pyproject, every
COPY source present in (and not ignored from) the build context, ports and env match the config."""

from __future__ import annotations

import fnmatch
import re
import tomllib

from deploykit import DEPLOY, DOCKERFILE, REPO, compose, example_config


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in _instructions():
        if ins[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def test_multi_stage_with_named_stages() -> None:
    stages = _stages()
    assert len(stages) >= 2
    names = [re.search(r"\bAS\s+(\S+)", s[0][1], re.I) for s in stages]
    assert all(names), "name every stage (FROM ... AS name)"
    final = stages[-1]
    copies = [args for op, args in final if op == "COPY"]
    assert any(c.startswith("--from=build ") for c in copies), (
        "the runtime copies from the build stage"
    )
    assert not any(op == "RUN" and "pip install" in args for op, args in final), (
        "no installs in the runtime stage"
    )


def test_runs_as_a_non_root_user() -> None:
    final = _stages()[-1]
    users = [args for op, args in final if op == "USER"]
    assert users, "the runtime stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    run = " ".join(args for op, args in final if op == "RUN")
    assert f"--uid {user}" in run, "the user is created in the image"


def test_entrypoint_is_the_cli_and_torch_is_pinned_like_pyproject() -> None:
    ins = _instructions()
    entry = [args for op, args in ins if op == "ENTRYPOINT"][-1]
    assert entry == '["fairfleet"]'
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "fairfleet" in scripts
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_pin = next(d for d in deps if d.startswith("torch=="))
    arg = next(args for op, args in ins if op == "ARG" and args.startswith("TORCH_VERSION="))
    assert arg == "TORCH_VERSION=" + torch_pin.split("==")[1]
    assert "TORCH_INDEX_URL" in DOCKERFILE.read_text()  # CPU-only wheels selectable at build time
    assert "://" not in DOCKERFILE.read_text(), "no index host names in the Dockerfile"


def _ignored(path: str) -> bool:
    """Whether deploy/Dockerfile.dockerignore keeps ``path`` out of the context (last match wins)."""
    ignored = False
    for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").removeprefix("**/")
        pattern = pattern.removesuffix("/**")
        if (
            pattern == "**"
            or fnmatch.fnmatch(path, pattern)
            or path.startswith(pattern + "/")
            or fnmatch.fnmatch(path.rsplit("/", 1)[-1], pattern)
        ):
            ignored = not negate
    return ignored


def test_copy_sources_exist_and_are_in_the_context() -> None:
    build = compose()["services"]["accountant"]["build"]
    context = REPO / build["context"]
    for op, args in _instructions():
        if op != "COPY" or args.startswith("--from="):
            continue
        *sources, _dest = args.split()
        for src in sources:
            assert (context / src).exists(), f"COPY {src}: not in the build context"
            assert not _ignored(src.rstrip("/")), f"COPY {src}: excluded by Dockerfile.dockerignore"
    assert _ignored(".venv") and _ignored(".git") and _ignored("tests/deploy")
    assert not _ignored("services/fairfleet/config.py")


def test_exposed_ports_cover_the_config_and_env_is_config_fields() -> None:
    cfg = example_config()
    exposed = {int(p) for op, args in _instructions() if op == "EXPOSE" for p in args.split()}
    wanted = (
        {cfg.accountant.metrics_port}
        | {m.metrics_port for m in cfg.models}
        | {s.metrics_port for s in cfg.sites}
    )
    assert wanted <= exposed
    from fairfleet.config import FleetConfig

    for var in re.findall(r"\b(FAIRFLEET_[A-Z0-9_]+)=", DOCKERFILE.read_text()):
        assert var.removeprefix("FAIRFLEET_").lower().split("__")[0] in FleetConfig.model_fields, (
            var
        )
