"""The fastest runtime per board, by measurement: `bench --runtime auto`, `compile --backend auto`.

A TVM artifact is only worth shipping where it beats the stock runtimes on that very board, so
`auto` measures every CPU runtime the artifact carries (TVM, ONNX Runtime, LiteRT when it has a
model.tflite), records the winner in each report, and `compile --backend auto --from-report`
makes that winner the artifact's default runtime for its target (what `bench` runs by default).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from edgecls.errors import UsageError

AUTO = "auto"


def expand_auto(manifest: dict) -> tuple[str, ...]:
    files = manifest.get("files", {})
    return ("tvm", "onnxruntime") + (("tflite",) if "model.tflite" in files else ())


def default_runtimes(manifest: dict) -> tuple[str, ...]:
    """What `bench` measures without --runtime: the artifact's chosen backend, else TVM."""
    return ((manifest.get("backend") or {}).get("runtime") or "tvm",)


def choose_runtime(reports: list[dict], unavailable: list[str]) -> dict | None:
    """Winner = lowest median among the batch-1 reports of one place; written into each report."""
    single = [r for r in reports if r.get("batch", 1) == 1 and (r.get("timings_ms") or {}).get("median")]
    if not single:
        return None
    medians = {r["runtime"]: r["timings_ms"]["median"] for r in single}
    winner = min(medians, key=medians.get)
    choice = {"winner": winner, "medians_ms": medians,
              "speedup_vs_tvm": round(medians["tvm"] / medians[winner], 3) if "tvm" in medians else None,
              "unavailable": unavailable}
    for r in single:
        r["runtime_choice"] = choice
    return choice


def backend_from_reports(paths: list[Path], target: str) -> dict:
    """The runtime that won on boards of `target` in these `bench --runtime auto` reports.

    Several boards: the runtime with the lowest median-of-medians across them wins."""
    per_runtime: dict[str, list[float]] = {}
    boards, used = set(), []
    for path in paths:
        path = Path(path)
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        for f in files:
            try:
                r = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError):
                raise UsageError(f"--from-report {f}: not a readable JSON report") from None
            choice = r.get("runtime_choice") if isinstance(r, dict) else None
            if not choice or (r.get("artifact") or {}).get("target") != target:
                continue
            board = (r.get("board") or {}).get("name")
            if board in boards:
                continue  # one vote per board (every report of a run carries the same choice)
            boards.add(board)
            used.append(str(f))
            for runtime, ms in choice["medians_ms"].items():
                per_runtime.setdefault(runtime, []).append(ms)
    if not per_runtime:
        raise UsageError(f"--from-report: no `bench --runtime auto` report for target {target} in "
                         f"{', '.join(map(str, paths))}")
    medians = {k: statistics.median(v) for k, v in per_runtime.items()}
    winner = min(medians, key=medians.get)
    return {"runtime": winner, "how": "auto: fastest measured", "boards": sorted(b for b in boards if b),
            "median_of_medians_ms": medians, "reports": used}
