"""The comparison table in three forms: rich (terminal), CSV (every field, raw numbers), Markdown."""

from __future__ import annotations

import csv
import io

from rich import box
from rich.table import Table

from edgecls.report.load import KEY_FIELDS, Loaded, Row

METRICS = ("median", "p90", "p99", "fps", "top1", "macs", "params", "model_bytes", "size_bytes", "instructions")
HEADERS = {"board": "board", "target": "target", "model": "model", "runtime": "runtime", "variant": "variant",
           "threads": "threads", "cores": "cores", "median": "median ms", "p90": "p90 ms", "p99": "p99 ms",
           "fps": "fps", "top1": "top-1", "macs": "MACs", "params": "params",
           "model_bytes": "model file", "size_bytes": "artifact",
           "instructions": "emulated instr/inference", "instructions_ratio": "instr/base",
           "median_ratio": "med/base", "fps_ratio": "fps/base", "top1_delta": "top-1 vs base",
           "warnings": "warnings"}


SHORT = {"model_bytes": "model\nfile",
         "median": "median\nms", "p90": "p90\nms", "p99": "p99\nms", "median_ratio": "median\n/base",
         "fps_ratio": "fps\n/base", "top1_delta": "top-1\nvs base", "instructions": "emulated\ninstr/inf",
         "instructions_ratio": "instr\n/base"}


def size_text(n) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def macs_text(n) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f}"


def ms_text(v) -> str:
    """Milliseconds in at most 7 characters, 3-4 significant digits."""
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def _f(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def display_columns(has_baseline: bool, rows=()) -> list[str]:
    """The columns shown; instruction counts (bench --count) only when a row has one."""
    counted = any(r.instructions is not None for r in rows)
    cols = list(KEY_FIELDS) + [m for m in METRICS if m != "instructions" or counted]
    if has_baseline:
        cols += ["median_ratio", "fps_ratio", "top1_delta"] + (["instructions_ratio"] if counted else [])
    return cols + ["warnings"]


def cell_text(row: Row, col: str) -> str:
    """The human text of one cell (terminal, Markdown, HTML)."""
    if col in KEY_FIELDS:
        return getattr(row, col)
    if col in ("median", "p90", "p99"):
        return ms_text(getattr(row, col))
    if col == "fps":
        return "-" if row.fps is None else (f"{row.fps:.0f}" if row.fps >= 100 else f"{row.fps:.3g}")
    if col == "top1":
        return _f(row.top1, ".3f")
    if col in ("size_bytes", "model_bytes"):
        return size_text(getattr(row, col))
    if col in ("macs", "params"):
        return macs_text(getattr(row, col))
    if col == "instructions":
        return "-" if row.instructions is None else f"{row.instructions / 1e6:.1f} M"
    if col == "instructions_ratio":
        return _f(row.ratios.get("instructions"), ".2f")
    if col == "median_ratio":
        return _f(row.ratios.get("median"), ".2f")
    if col == "fps_ratio":
        return _f(row.ratios.get("fps"), ".2f")
    if col == "top1_delta":
        d = row.ratios.get("top1_delta")
        return "-" if d is None else f"{d * 100:+.2f} pt"
    if col == "warnings":
        return "; ".join(row.warnings)
    raise KeyError(col)


def cell_value(row: Row, col: str):
    """The sortable raw value of one cell (None when missing)."""
    if col in KEY_FIELDS:
        v = getattr(row, col)
        return int(v) if v.isdigit() else v
    if col in METRICS:
        return getattr(row, col)
    if col == "median_ratio":
        return row.ratios.get("median")
    if col == "fps_ratio":
        return row.ratios.get("fps")
    if col == "top1_delta":
        return row.ratios.get("top1_delta")
    if col == "instructions_ratio":
        return row.ratios.get("instructions")
    return len(row.warnings)


def rich_table(loaded: Loaded, baseline: Row | None = None) -> Table:
    """Compact for a terminal: the six key fields in one three-line cell, the warnings listed
    under the table (see warning_lines), a '!' column marking the rows that have some."""
    title = "edgecls report" + (f" (baseline {baseline.label})" if baseline else "")
    table = Table(title=title, box=box.SIMPLE_HEAD, show_lines=True, pad_edge=False,
                  collapse_padding=True)
    table.add_column("board (target)\nmodel\nruntime variant\nthreads, cpus", overflow="fold", min_width=16)
    cols = [c for c in display_columns(baseline is not None, loaded.rows) if c not in KEY_FIELDS and c != "warnings"]
    for c in cols:
        table.add_column(SHORT.get(c, HEADERS[c]), justify="right", no_wrap=True)
    table.add_column("!", style="bold yellow", no_wrap=True)
    for i, r in enumerate(loaded.rows, 1):
        style = "bold" if baseline is not None and r is baseline else None
        threads = "-" if r.threads == "default" else r.threads
        table.add_row(f"{r.board} ({r.target})\n{r.model}\n{r.runtime} {r.variant}\nthr {threads}, cpu {r.cores}",
                      *(cell_text(r, c) for c in cols), f"!{i}" if r.warnings else "", style=style)
    return table


def warning_lines(loaded: Loaded) -> list[str]:
    """'!N board:runtime:variant (...): warning; warning' for each flagged row of rich_table."""
    return [f"!{i} {r.label}: {'; '.join(r.warnings)}" for i, r in enumerate(loaded.rows, 1) if r.warnings]


CSV_FIELDS = (list(KEY_FIELDS) + ["median_ms", "p90_ms", "p99_ms", "fps", "top1", "macs", "params",
                                  "model_bytes", "size_bytes",
                                  "emulated_instructions",
                                  "median_ratio", "p90_ratio", "p99_ratio", "fps_ratio", "top1_delta",
                                  "warnings", "runs", "artifact", "artifact_id", "model_sha256",
                                  "runtime_version", "schema", "created", "report"])


def csv_text(loaded: Loaded) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for r in loaded.rows:
        ratios = r.ratios
        values = [*r.key, r.median, r.p90, r.p99, r.fps, r.top1, r.macs, r.params, r.model_bytes, r.size_bytes,
                  r.instructions,
                    ratios.get("median"), ratios.get("p90"), ratios.get("p99"), ratios.get("fps"),
                    ratios.get("top1_delta"), "; ".join(r.warnings), len(r.runs), r.artifact_name,
                    r.artifact_id, r.model_sha256, r.runtime_version, r.schema, r.created, r.path]
        w.writerow(["" if v is None else v for v in values])
    return buf.getvalue()


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_text(loaded: Loaded, baseline: Row | None = None) -> str:
    cols = display_columns(baseline is not None, loaded.rows)
    lines = ["# edgecls benchmark report", ""]
    if baseline is not None:
        lines += [f"Baseline: `{baseline.label}` (ratios: latency row/baseline, fps row/baseline).", ""]
    lines.append("| " + " | ".join(HEADERS[c] for c in cols) + " |")
    lines.append("|" + "|".join("---" if c in KEY_FIELDS or c == "warnings" else "---:" for c in cols) + "|")
    for r in loaded.rows:
        lines.append("| " + " | ".join(_md_escape(cell_text(r, c)) or " " for c in cols) + " |")
    if loaded.notes or loaded.warnings:
        lines += ["", "## Notes", ""]
        lines += [f"- skipped: {_md_escape(w)}" for w in loaded.warnings]
        lines += [f"- {_md_escape(n)}" for n in loaded.notes]
    return "\n".join(lines) + "\n"
