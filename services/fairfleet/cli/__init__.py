"""The `fairfleet` command line.

Each module in this package owns one command or command group and exposes
``register(app: typer.Typer) -> None``. Modules keep heavy imports (torch, confluent-kafka)
inside the command functions so that `fairfleet --help` stays fast.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

app = typer.Typer(
    name="fairfleet",
    help="Streaming federated learning for industrial fleets: private, fair, accounted.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_all() -> None:
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register_all()


def main() -> None:
    """Console-script entry point; turns FairfleetError into a clean message and exit code 2."""
    from fairfleet.errors import FairfleetError

    try:
        app()
    except FairfleetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from exc
