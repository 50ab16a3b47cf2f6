"""Read `edgecls bench` JSON reports into comparable rows.

One row per (board, target, model, runtime, variant, threads, cores): two artifacts share a row only
when they are builds of one model file with one variant. Robust on purpose: a file that is
not JSON, or JSON that is not an edgecls bench report, is named in a warning and skipped; a report
of another schema version or with missing fields is read for what it has, with a note. Several
reports for one row key: the newest (by its `created` stamp) is kept and the others are named in
a note -- no averaging, because a re-run usually means the earlier one was not trusted.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from edgecls.errors import UsageError
from edgecls.report.checks import row_warnings

REPORT_KIND = "edgecls-bench-report"
KNOWN_SCHEMAS = (1,)
KEY_FIELDS = ("board", "target", "model", "runtime", "variant", "threads", "cores")


@dataclass
class Row:
    board: str
    target: str
    model: str  # name@sha256[:8] of the model file given to compile (before optimize)
    runtime: str
    variant: str
    threads: str
    cores: str
    median: float | None = None
    p90: float | None = None
    p99: float | None = None
    fps: float | None = None
    top1: float | None = None
    size_bytes: int | None = None  # the whole artifact
    model_bytes: int | None = None  # the file this runtime loads (model.so for TVM)
    macs: int | None = None
    params: int | None = None
    instructions: int | None = None  # per inference under qemu (bench --count): emulated, not time
    warnings: list[str] = field(default_factory=list)
    runs: list[float] = field(default_factory=list)
    created: str = ""
    path: str = ""
    schema: object = None
    artifact_id: str | None = None
    artifact_name: str | None = None
    model_sha256: str | None = None
    runtime_version: str | None = None
    ratios: dict = field(default_factory=dict)  # filled by apply_baseline

    @property
    def key(self) -> tuple[str, ...]:
        return tuple(getattr(self, f) for f in KEY_FIELDS)

    @property
    def label(self) -> str:
        return f"{self.model}/{self.board}:{self.runtime}:{self.variant} (threads {self.threads}, cores {self.cores})"


@dataclass
class Loaded:
    rows: list[Row]
    warnings: list[str]  # files skipped
    notes: list[str]  # files read with caveats, duplicates replaced, artifacts merged


def cpu_list(cpus) -> str:
    """[0, 1, 2, 3, 6] -> '0-3,6'; None/[] -> 'all'."""
    if not cpus:
        return "all"
    try:
        ids = sorted({int(c) for c in cpus})
    except (TypeError, ValueError):
        return str(cpus)
    parts, start, prev = [], ids[0], ids[0]
    for c in ids[1:] + [None]:
        if c is not None and c == prev + 1:
            prev = c
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if c is not None:
            start = prev = c
    return ",".join(parts)


def _num(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _int(value) -> int | None:
    return int(value) if _num(value) is not None and math.isfinite(value) else None


def _str(value) -> str | None:
    return value if isinstance(value, str) else None


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def expand_paths(paths) -> list[Path]:
    """Files as given; a directory stands for the *.json files in it."""
    out: list[Path] = []
    for p in map(Path, paths):
        out += sorted(p.glob("*.json")) if p.is_dir() else [p]
    return out


def read_report(path: Path) -> tuple[dict | None, str | None]:
    """(report, None) or (None, why it was skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, f"{path}: no such file, skipped"
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"{path}: unreadable ({getattr(exc, 'strerror', None) or exc}), skipped"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"{path}: not valid JSON ({exc.msg}: line {exc.lineno} column {exc.colno}), skipped"
    if not isinstance(data, dict) or data.get("kind") != REPORT_KIND:
        kind = data.get("kind") if isinstance(data, dict) else type(data).__name__
        return None, f"{path}: not an edgecls bench report (kind {kind!r}), skipped"
    return data, None


def model_text(art: dict) -> str:
    """name@sha256[:8] of the model given to compile; older reports: their model source's stem."""
    name = _str(art.get("model_name")) or Path(_str(art.get("model_source")) or "").stem
    sha = _str(art.get("model_origin_sha256")) or _str(art.get("model_sha256")) or ""
    return "@".join(p for p in (name, sha[:8]) if p) or "?"


def place_text(r: dict) -> tuple[str, str]:
    """(threads, cores) in one vocabulary, whichever runner measured.

    edgecls-runner reports TVM's pool size and the CPUs it may run on; the Python harnesses the
    threads asked for and (older ones) no CPUs unless pinned. So: threads is what the runtimes
    were given (`bench` decides a default count, bench/threads.py; reports before it say
    'default' when nothing was asked), cores the CPU list pinned, else the CPUs the process had,
    'all' when those are every online CPU. A count (bench --count) ran with its own thread count.
    """
    opts, device = _dict(r.get("options")), _dict(r.get("device"))
    measured = r.get("threads") if isinstance(r.get("threads"), int) else None
    asked = opts.get("threads") if "threads" in opts else measured  # reports without options: measured
    if isinstance(r.get("instructions"), dict) and measured is not None:
        asked = measured
    threads = str(asked) if isinstance(asked, int) and asked > 0 else "default"
    pinned = opts.get("cores_resolved")
    used = pinned if isinstance(pinned, list) and pinned else r.get("cores")
    online = _int(device.get("online_cpus"))
    if not isinstance(used, list) or not used:
        return threads, "all"
    if not pinned and online and {c for c in used if isinstance(c, int)} >= set(range(online)):
        return threads, "all"
    return threads, cpu_list(used)


def _variant(r: dict, art: dict) -> str:
    """The artifact's variant; a batch size, a TensorRT precision and a background load are
    variants of their own (fp32-b4, int8-trt-fp16, fp32-load1)."""
    variant = str(art.get("variant") or "fp32")
    if isinstance(r.get("batch"), int) and r["batch"] != 1:
        variant += f"-b{r['batch']}"
    precision = _dict(r.get("tensorrt")).get("precision")
    if r.get("runtime") == "tensorrt" and precision:
        variant += f"-trt-{precision}"
    load = _int(_dict(r.get("background_load")).get("processes"))
    if load:
        variant += f"-load{load}"
    return variant


def _fps(r: dict, t: dict, bench: dict) -> float | None:
    fps = _num(bench.get("fps"))
    if isinstance(r.get("batch"), int) and r["batch"] != 1 and _num(bench.get("images_per_s")):
        fps = _num(bench.get("images_per_s"))  # images/s: a batch of N counts N
    if fps is None and _num(t.get("mean")):
        fps = 1000.0 / t["mean"]
    return fps


def to_row(r: dict, path: Path) -> tuple[Row, list[str]]:
    """One report -> a row, plus notes about what it lacked."""
    notes, missing = [], []
    board, art = _dict(r.get("board")), _dict(r.get("artifact"))
    t, acc = _dict(r.get("timings_ms")), _dict(r.get("accuracy"))
    schema = r.get("schema")
    if schema not in KNOWN_SCHEMAS:
        notes.append(f"{path.name}: schema {schema!r} (this edgecls writes {KNOWN_SCHEMAS[-1]}); read what matches")
    threads, cores = place_text(r)
    median, p90, p99 = _num(t.get("median")), _num(t.get("p90")), _num(t.get("p99"))
    runs = [float(v) for v in t["runs"] if _num(v) is not None] if isinstance(t.get("runs"), list) else []
    row = Row(board=str(board.get("name") or "?"), target=str(art.get("target") or board.get("target") or "?"),
              model=model_text(art), runtime=str(r.get("runtime") or "?"), variant=_variant(r, art),
              threads=threads, cores=cores, median=median, p90=p90, p99=p99,
              fps=_fps(r, t, _dict(r.get("bench"))), top1=_num(acc.get("top1")),
              size_bytes=_int(art.get("size_bytes")), model_bytes=_int(art.get("model_bytes")),
              macs=_int(art.get("macs")), params=_int(art.get("params")), runs=runs,
              instructions=_int(_dict(r.get("instructions")).get("per_inference")),
              created=str(r.get("created") or ""), path=str(path), schema=schema,
              artifact_id=_str(art.get("id")), artifact_name=_str(art.get("name")),
              model_sha256=_str(art.get("model_sha256")), runtime_version=_str(r.get("runtime_version")))
    for name, value in (("board name", board.get("name")), ("runtime", r.get("runtime")),
                        ("target", row.target != "?" or None),
                        ("median latency", median if row.instructions is None else True),
                        ("created", r.get("created"))):
        if value is None:
            missing.append(name)
    if missing:
        notes.append(f"{path.name}: no {', '.join(missing)} in the report")
    row.warnings = row_warnings(r, row)
    return row, notes


def load_reports(paths) -> Loaded:
    rows: dict[tuple, Row] = {}
    warnings, notes = [], []
    for path in expand_paths(paths):
        data, why = read_report(path)
        if data is None:
            warnings.append(why)
            continue
        row, row_notes = to_row(data, path)
        notes += row_notes
        old = rows.get(row.key)
        if old is None:
            rows[row.key] = row
            continue
        keep, drop = (row, old) if row.created >= old.created else (old, row)
        other = "" if keep.artifact_id == drop.artifact_id else " (a different artifact build)"
        notes.append(f"{row.label}: {Path(keep.path).name} "
                     f"({keep.created or 'no date'}) kept, older {Path(drop.path).name} "
                     f"({drop.created or 'no date'}){other} dropped")
        rows[row.key] = keep
    kept = sorted(rows.values(), key=lambda r: (r.board, r.target, r.model, r.variant, r.runtime, r.threads, r.cores))
    notes += _artifact_notes(kept)
    return Loaded(kept, warnings, notes)


def _artifact_notes(rows: list[Row]) -> list[str]:
    """Rows built from several artifacts: say so, so nobody compares them unawares."""
    notes = []
    by_model: dict[str, set] = {}
    for r in rows:
        if r.model_sha256 and r.artifact_id:
            by_model.setdefault(r.model_sha256, set()).add(r.artifact_id)
    for sha, ids in by_model.items():
        if len(ids) > 1:
            notes.append(f"model {sha[:12]}: rows merged from {len(ids)} different artifacts "
                         f"({', '.join(sorted(i[:12] for i in ids))})")
    return notes


def _model_matches(row: Row, model: str | None) -> bool:
    """A --baseline model: the model column's text, its name, or a prefix of its sha256."""
    if model is None:
        return True
    name, _, sha = row.model.partition("@")
    by_sha = bool(sha) and len(model) >= 4 and (sha.startswith(model) or model.startswith(sha))
    return model in (row.model, name) or by_sha


def find_baseline(rows: list[Row], spec: str) -> Row:
    """'[model/]board:runtime:variant[:threads[:cores]]' -> the one matching row."""
    model, _, place = spec.rpartition("/")
    parts = place.split(":")
    if not 3 <= len(parts) <= 5 or not all(parts) or (_ and not model):
        raise UsageError(f"--baseline takes [model/]board:runtime:variant[:threads[:cores]], got '{spec}'")
    fields = ("board", "runtime", "variant", "threads", "cores")[:len(parts)]
    hits = [r for r in rows if _model_matches(r, model or None)
            and all(getattr(r, f) == v for f, v in zip(fields, parts))]
    several = len({r.model for r in rows}) > 1
    if not hits:
        have = ", ".join(sorted({f"{r.model + '/' if several else ''}{r.board}:{r.runtime}:{r.variant}" for r in rows}))
        raise UsageError(f"--baseline {spec} matches no row (rows: {have})")
    if len(hits) > 1:
        have = ", ".join(f"{r.model}/{r.board}:{r.runtime}:{r.variant}:{r.threads}:{r.cores}" for r in hits)
        raise UsageError(f"--baseline {spec} matches {len(hits)} rows; add model/ or :threads[:cores] ({have})")
    return hits[0]


def apply_baseline(rows: list[Row], base: Row) -> None:
    """ratios: latency row/base (<1 faster), fps row/base (>1 faster), top-1 in points vs base."""
    def ratio(a, b):
        return a / b if a is not None and b else None
    for r in rows:
        r.ratios = {"median": ratio(r.median, base.median), "p90": ratio(r.p90, base.p90),
                    "p99": ratio(r.p99, base.p99), "fps": ratio(r.fps, base.fps),
                    "instructions": ratio(r.instructions, base.instructions),
                    "top1_delta": (r.top1 - base.top1) if r.top1 is not None and base.top1 is not None else None}
