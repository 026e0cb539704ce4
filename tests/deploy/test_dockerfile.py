"""deploy/Dockerfile, statically: multi-stage, non-root, CPU torch pinned like pyproject, every
COPY source present in (and not ignored from) the build context, ports and env match the config."""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

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
    assert "://" not in DOCKERFILE.read_text(), "no index host names in the Dockerfile"


def _build_args(stage: list[tuple[str, str]]) -> dict[str, str]:
    return dict(args.split("=", 1) for op, args in stage if op == "ARG" and "=" in args)


def test_torch_is_the_cpu_build_by_default_and_cuda_is_a_build_argument() -> None:
    """Every uv install of the build stage runs with UV_TORCH_BACKEND from the TORCH_BACKEND
    build argument, whose default is `cpu`; and uv is the version the dev extras pin (the one
    the next test asks)."""
    build = _stages()[0]
    args = _build_args(build)
    assert args["TORCH_BACKEND"] == "cpu"
    env = " ".join(a for op, a in build if op == "ENV")
    assert "UV_TORCH_BACKEND=${TORCH_BACKEND}" in env
    installs = [a for op, a in build if op == "RUN" and "install" in a]
    assert installs and all("pip install" in a for a in installs)
    plain_pip = [a for a in installs if "uv pip install" not in a]
    assert plain_pip == ['pip install "uv==${UV_VERSION}" && python -m venv /opt/fairfleet'], (
        "everything but uv itself goes through uv, so the torch backend applies to it"
    )
    dev = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert f"uv=={args['UV_VERSION']}" in [d.split(";")[0].strip() for d in dev["dev"]]


def _resolve_torch(backend: str, version: str) -> str:
    """What uv does for the Dockerfile's torch line: the resolved requirement when PyTorch's
    index answers, or (no network, as in CI here) the error naming the index it asked."""
    uv = Path(sys.executable).with_name("uv")
    out = subprocess.run(
        [
            str(uv),
            "pip",
            "compile",
            "-",
            "--torch-backend",
            backend,
            "--python-version",
            "3.11",
            "--python-platform",
            "x86_64-manylinux_2_28",
            "--no-header",
            "--quiet",
        ],
        input=f"torch=={version}\n",
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "UV_HTTP_RETRIES": "0", "UV_NO_CACHE": "1"},
    )
    return out.stdout + out.stderr


def test_the_torch_line_resolves_to_the_cpu_only_wheel() -> None:
    """The default backend resolves torch to PyTorch's CPU-only variant (local version `+cpu`,
    from its `/whl/cpu/` index), never the default CUDA wheel with its nvidia-* dependencies.
    The CPU wheel of torch for CPython 3.11 on x86_64 is about 0.2 GB against about 0.9 GB plus
    ~3 GB of nvidia wheels for the default build; with no network the check is on the index uv
    asks, which only serves the CPU variant."""
    build = _stages()[0]
    args = _build_args(build)
    text = _resolve_torch(args["TORCH_BACKEND"], args["TORCH_VERSION"])
    resolved = re.search(r"^torch==(\S+)$", text, re.MULTILINE)
    if resolved:
        assert resolved.group(1) == args["TORCH_VERSION"] + "+cpu", text
        assert "nvidia" not in text, text
    else:
        assert "/whl/cpu/torch/" in text, text
    cuda = _resolve_torch("cu126", args["TORCH_VERSION"])  # the check tells the variants apart
    assert "/whl/cpu/" not in cuda and ("+cu126" in cuda or "/whl/cu126/" in cuda), cuda


def test_base_images_are_pinned_by_digest() -> None:
    base = _build_args(_instructions()[: [op for op, _ in _instructions()].index("FROM")])
    assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", base["PYTHON_IMAGE"])


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
