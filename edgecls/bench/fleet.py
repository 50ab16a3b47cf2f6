"""Many places at once: a bounded pool, a live status table, one failing board stops nothing."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from edgecls.bench.harness import BenchOptions, PartialBench, bench_one, write_report
from edgecls.bench.places import Place
from edgecls.errors import EdgeclsError


@dataclass
class PlaceResult:
    name: str
    status: str = "queued"  # queued | deploying | measuring | done | failed
    detail: str = ""
    reports: list[Path] = field(default_factory=list)
    medians: dict = field(default_factory=dict)


def _medians(reports: list[dict]) -> dict:
    """Median ms per runtime (and batch) for the live table; a counted report has none."""
    return {r["runtime"] + (f" b{r['batch']}" if r.get("batch", 1) != 1 else ""): r["timings_ms"]["median"]
            for r in reports if r.get("timings_ms")}


def bench_places(artifact: Path, places: list[Place], opts: BenchOptions, out_dir: Path,
                 max_parallel: int = 4, on_change=lambda results: None) -> list[PlaceResult]:
    results = {p.name: PlaceResult(p.name) for p in places}
    lock = threading.Lock()

    def update(name, **kw):
        with lock:
            for k, v in kw.items():
                setattr(results[name], k, v)
            on_change(list(results.values()))

    def work(place: Place):
        update(place.name, status="deploying" if place.kind == "board" else "measuring")

        def log(msg):
            if "harness" in msg or ": tvm:" in msg or ": onnxruntime:" in msg or ": tflite:" in msg:
                update(place.name, status="measuring", detail=msg.split(":")[1].strip())

        try:
            reports = bench_one(artifact, place, opts, log=log)
            paths = [write_report(out_dir, r) for r in reports]
            update(place.name, status="done", reports=paths, detail="",
                   medians=_medians(reports))
        except PartialBench as exc:  # e.g. tvm measured, tensorrt absent: keep the tvm report
            paths = [write_report(out_dir, r) for r in exc.reports]
            update(place.name, status="failed", detail=str(exc), reports=paths,
                   medians=_medians(exc.reports))
        except EdgeclsError as exc:
            update(place.name, status="failed", detail=str(exc))
        except Exception as exc:  # one board's surprise must not stop the others
            update(place.name, status="failed", detail=f"{type(exc).__name__}: {exc}")
        finally:
            close = getattr(getattr(place, "ssh", None), "close", None)
            if close:
                close()

    on_change(list(results.values()))
    with ThreadPoolExecutor(max_workers=max(1, min(max_parallel, len(places)))) as pool:
        list(pool.map(work, places))
    return list(results.values())
