"""`edgecls report`: compare bench reports (terminal table, CSV, Markdown, PNG plots, HTML, MLflow).

The table goes to stdout, skipped files to stderr."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from edgecls.report.build import ReportResult


@click.command()
@click.argument("reports", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the table as CSV (raw numbers, every field).")
@click.option("--md", "md_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the table as Markdown.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write one self-contained HTML page (sortable table, embedded plots; works offline).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write PNG plots: PATH (latency), PATH-accuracy (top-1 vs latency, Pareto front), "
                   "PATH-runs (per-run distribution); one with nothing to show is left out, with a note.")
@click.option("--baseline", default=None, metavar="[MODEL/]BOARD:RUNTIME:VARIANT[:THREADS[:CORES]]",
              help="Show ratios against this row, e.g. rk1:tvm:fp32 or resnet18/rk1:tvm:fp32.")
@click.option("--mlflow", "mlflow_uri", default=None, metavar="URI",
              help="Also log every row as an MLflow run (needs edgecls[mlflow]), e.g. file:///tmp/mlruns.")
@click.option("--title", default="edgecls report", show_default=True, help="Title of the HTML page.")
def report(reports, csv_path, md_path, html_path, plot_path, baseline, mlflow_uri, title):
    """Compare bench reports: one row per board, target, model, runtime, variant, threads and cores.

    REPORTS are JSON files written by `edgecls bench` (or folders of them). Unreadable files are
    skipped with a warning; for several reports of one row the newest is kept.
    """
    from edgecls import api
    show_report(api.report_result(list(reports), baseline=baseline, csv=csv_path, md=md_path, html=html_path,
                                  plot=plot_path, mlflow=mlflow_uri, title=title, warn=warn_on_stderr))


def warn_on_stderr(msg: str) -> None:
    """Skipped files go to stderr: stdout holds the table."""
    from edgecls.commands.views import err_console
    err_console.print(f"[yellow]warning:[/yellow] {msg}", highlight=False, soft_wrap=True)


def show_report(result: ReportResult) -> None:
    from rich.console import Console

    from edgecls.commands.views import console
    from edgecls.report.table import rich_table, warning_lines
    # Piped into a file or CI log: no terminal width to respect, so do not fold the numbers.
    out = console if console.is_terminal else Console(width=max(console.width, 160))
    out.print(rich_table(result.loaded, result.baseline))
    for line in warning_lines(result.loaded):
        console.print(f"[yellow]{line}[/yellow]", highlight=False, soft_wrap=True)
    for note in result.loaded.notes:
        console.print(f"[dim]note: {note}[/dim]", highlight=False, soft_wrap=True)
    for path in result.written:
        console.print(f"wrote {path}", highlight=False, soft_wrap=True)
    if result.mlflow_runs:
        console.print(f"MLflow: {len(result.mlflow_runs)} run(s) logged", highlight=False)
