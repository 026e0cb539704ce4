"""`fairfleet demo`: broker, accountant, aggregator and six site agents, end to end, with a report."""

from __future__ import annotations

from pathlib import Path

import typer


def demo_cmd(
    report: Path = typer.Option(
        Path("demo-report"), "--report", help="Folder for the plots and index.html."
    ),
    rounds: int = typer.Option(8, help="Federated rounds."),
    epsilon: float = typer.Option(
        16.0, help="Target ε per site over the run (policy allows 25% more)."
    ),
    gamma: float = typer.Option(0.05, help="Fairness bound γ of the gap-constrained strategy."),
    bootstrap: str | None = typer.Option(
        None, help="Use this Kafka broker instead of starting one."
    ),
    work_dir: Path | None = typer.Option(
        None, help="Folder for config, keys, state and logs (default: a temp dir)."
    ),
) -> None:
    """Run a small private, fair fleet on a local broker and print a table per class."""
    from rich.console import Console
    from rich.table import Table

    from fairfleet.demo import DemoSettings, run_demo
    from fairfleet.sim.demo_report import class_rows

    console, progress_console = (
        Console(),
        Console(stderr=True),
    )  # results on stdout, progress on stderr
    settings = DemoSettings(rounds=rounds, epsilon=epsilon, gamma=gamma)
    from fairfleet.cli._progress import progress_bar

    with progress_bar("demo", progress_console) as bar:
        task = bar.add_task("starting", total=rounds)

        def progress(done: int, total: int, message: str) -> None:
            bar.update(task, completed=done, total=total, description=message)

        summary = run_demo(
            report, settings, bootstrap=bootstrap, work_dir=work_dir, progress=progress
        )
    final = summary["final"]
    if final is None:
        progress_console.print("[red]no model version was released[/]")
        raise typer.Exit(1)
    table = Table(
        title=f"after {rounds} rounds (model version {final['version']}): held-out quality per class"
    )
    for column in ("class", "sites", "loss", "accuracy", "gap to fleet", "ε spent per site"):
        table.add_column(
            column, justify="left" if column in ("class", "sites", "ε spent per site") else "right"
        )
    for row in class_rows(summary):
        eps = "\n".join(
            f"{s} {v:.2f}" if v is not None else f"{s} ?" for s, v in row["epsilon"].items()
        )
        table.add_row(
            row["class"],
            "\n".join(row["sites"]),
            f"{row['loss']:.4f}",
            f"{row['accuracy']:.1%}",
            f"{row['gap_to_fleet']:+.4f}",
            eps,
        )
    table.add_row("fleet", "", f"{final['fleet_loss']:.4f}", "", f"gap {final['gap']:.4f}", "")
    from fairfleet.cli._tables import unbroken

    console.print(unbroken(table, console.width))
    console.print(
        f"report: {report / 'index.html'}   ({summary['seconds']} s; service logs in {summary['logs']})"
    )


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_cmd)
