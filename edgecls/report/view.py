"""Terminal output of `edgecls report`: the table on stdout, skipped files on stderr."""

from __future__ import annotations

from rich.console import Console

from edgecls.report.build import ReportResult
from edgecls.report.console import console
from edgecls.report.table import rich_table, warning_lines

err_console = Console(stderr=True)


def warn(msg: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {msg}", highlight=False, soft_wrap=True)


def show(result: ReportResult) -> None:
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
