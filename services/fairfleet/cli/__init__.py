"""The `fairfleet` command line.

Each module in this package owns one command or command group and exposes
``register(app: typer.Typer) -> None``. Modules keep heavy imports (torch, confluent-kafka)
inside the command functions so that `fairfleet --help` stays fast.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer


def _no_flag_type() -> None:
    """Help shows no ``<bool>`` after a flag: a flag takes no value (typer 0.29 prints its type)."""
    from typer.core import TyperOption

    original = TyperOption.display_type_rich
    if getattr(original, "_fairfleet", False):
        return

    def display_type_rich(self: TyperOption, ctx: object) -> str | None:
        return None if getattr(self, "is_flag", False) else original(self, ctx)  # type: ignore[arg-type]

    display_type_rich._fairfleet = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_no_flag_type()

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


def _version(value: bool) -> None:
    if value:
        from fairfleet import __version__

        typer.echo(f"fairfleet {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Streaming federated learning for industrial fleets: private, fair, accounted.

    Conventions: results on stdout (--json: one JSON object), progress and logs on stderr;
    exit 0 on success, 1 on a failure, 2 on a usage error.
    """


def usage_for_old_json(ctx: typer.Context, as_json: bool) -> None:
    """Extra arguments are a usage error; ``--json FILE`` (before --json became a flag) names --out."""
    if not ctx.args:
        return
    if as_json:
        raise typer.BadParameter(
            f"--json is a flag (machine output on stdout); write the document with --out "
            f"{ctx.args[0]}",
            param_hint="'--json'",
        )
    raise typer.BadParameter(f"unexpected extra argument(s): {' '.join(ctx.args)}")


EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": False}


_register_all()


def main() -> None:
    """Console-script entry point: a FairfleetError is a clean message and exit code 1
    (click's usage errors exit 2)."""
    from fairfleet.errors import FairfleetError

    try:
        app()
    except FairfleetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from exc
