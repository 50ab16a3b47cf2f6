"""`edgecls report`: compare bench reports (terminal table, CSV, Markdown, PNG plots, HTML, MLflow)."""

from __future__ import annotations

from pathlib import Path

import click


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
                   "PATH-runs (per-run distribution).")
@click.option("--baseline", default=None, metavar="BOARD:RUNTIME:VARIANT[:THREADS[:CORES]]",
              help="Show ratios against this row, e.g. rk1:tvm:fp32.")
@click.option("--mlflow", "mlflow_uri", default=None, metavar="URI",
              help="Also log every row as an MLflow run (needs edgecls[mlflow]), e.g. file:///tmp/mlruns.")
@click.option("--title", default="edgecls report", show_default=True, help="Title of the HTML page.")
def report(reports, csv_path, md_path, html_path, plot_path, baseline, mlflow_uri, title):
    """Compare bench reports: one row per board, target, runtime, variant, threads and cores.

    REPORTS are JSON files written by `edgecls bench` (or folders of them). Unreadable files are
    skipped with a warning; for several reports of one row the newest is kept.
    """
    from edgecls.report.build import ReportRequest, build_report
    from edgecls.report.view import show, warn
    req = ReportRequest(paths=list(reports), csv=csv_path, md=md_path, html=html_path, plot=plot_path,
                        baseline=baseline, mlflow=mlflow_uri, title=title)
    show(build_report(req, warn=warn))
