"""`edgecls report` as one function: read the bench reports, compare, write the requested files.

--plot PATH writes up to three PNGs: PATH (latency bars), PATH's stem + "-accuracy" (top-1 vs
latency, Pareto front) and + "-runs" (per-run latency distribution). The HTML page embeds them. A
figure with nothing to show is neither written nor embedded; a note says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgecls.errors import EdgeclsError
from edgecls.report.files import write_atomic
from edgecls.report.load import Loaded, Row, apply_baseline, find_baseline, load_reports


@dataclass
class ReportRequest:
    paths: list[Path]
    csv: Path | None = None
    md: Path | None = None
    html: Path | None = None
    plot: Path | None = None
    baseline: str | None = None
    mlflow: str | None = None
    title: str = "edgecls report"


@dataclass
class ReportResult:
    loaded: Loaded
    baseline: Row | None
    written: list[Path] = field(default_factory=list)
    mlflow_runs: list[str] = field(default_factory=list)


def plot_paths(plot: Path) -> dict[str, Path]:
    plot = Path(plot)
    suffix = plot.suffix or ".png"
    return {"latency": plot.with_suffix(suffix), "accuracy": plot.with_name(f"{plot.stem}-accuracy{suffix}"),
            "runs": plot.with_name(f"{plot.stem}-runs{suffix}")}


def build_report(req: ReportRequest, warn=lambda msg: None) -> ReportResult:
    """warn(msg) is called for every file skipped, before an error about having nothing left."""
    if req.mlflow:
        from edgecls.report.mlflow_log import require_mlflow
        require_mlflow()
    loaded = load_reports(req.paths)
    for w in loaded.warnings:
        warn(w)
    if not loaded.rows:
        n = len(loaded.warnings)
        raise EdgeclsError(f"no valid edgecls bench report among the {n} file(s) given" if n else
                           "no bench report files given (pass reports/*.json or a folder of them)")
    baseline = find_baseline(loaded.rows, req.baseline) if req.baseline else None
    if baseline is not None:
        apply_baseline(loaded.rows, baseline)
    result = ReportResult(loaded, baseline)
    from edgecls.report.table import csv_text, markdown_text
    if req.csv:
        result.written.append(write_atomic(req.csv, csv_text(loaded)))
    if req.md:
        result.written.append(write_atomic(req.md, markdown_text(loaded, baseline)))
    if req.plot or req.html:
        _figures(req, result)
    if req.mlflow:
        result.mlflow_runs = log_to_mlflow(req.mlflow, result)
    return result


def _figures(req: ReportRequest, result: ReportResult) -> None:
    """--plot files and the HTML page. A figure left out: a note for its --plot file, a line in
    its place on the page."""
    from edgecls.report.plots import all_pngs, left_out
    pngs = all_pngs(result.loaded.rows)
    missing = left_out(pngs)
    if req.plot:
        for name, path in plot_paths(req.plot).items():
            if name in pngs:
                result.written.append(write_atomic(path, pngs[name]))
            else:
                result.loaded.notes.append(f"{path.name} not written: {missing[name]}")
    if req.html:
        from edgecls.report.html import page
        result.written.append(write_atomic(req.html, page(result.loaded, pngs, result.baseline, req.title, missing)))


def row_params(r: Row) -> dict:
    return {"board": r.board, "target": r.target, "model": r.model, "runtime": r.runtime, "variant": r.variant,
            "threads": r.threads, "cores": r.cores, "artifact": r.artifact_name, "artifact_id": r.artifact_id,
            "model_sha256": r.model_sha256, "runtime_version": r.runtime_version, "schema": r.schema,
            "created": r.created, "warnings": "; ".join(r.warnings) or "none"}


def row_metrics(r: Row) -> dict:
    m = {"median_ms": r.median, "p90_ms": r.p90, "p99_ms": r.p99, "fps": r.fps, "top1": r.top1,
         "size_bytes": r.size_bytes, "model_bytes": r.model_bytes, "macs": r.macs, "params": r.params,
         "emulated_instructions": r.instructions,
         "warnings": len(r.warnings)}
    m.update({f"{k}_vs_baseline": v for k, v in r.ratios.items()})
    return m


def log_to_mlflow(uri: str, result: ReportResult) -> list[str]:
    """One MLflow run per row (its report JSON attached), plus one holding the files written."""
    from edgecls.report.mlflow_log import log_run
    runs = []
    for r in result.loaded.rows:
        artifacts = [r.path] if Path(r.path).is_file() else []
        runs.append(log_run(uri, r.label, row_params(r), row_metrics(r), artifacts,
                            tags={"edgecls.kind": "bench-row"}))
    if result.written:
        runs.append(log_run(uri, "edgecls report", {"baseline": result.baseline.label if result.baseline else None},
                            {"rows": len(result.loaded.rows), "skipped_files": len(result.loaded.warnings)},
                            result.written, tags={"edgecls.kind": "report"}))
    return runs
