"""The benchmark job: artifact + place + options -> one JSON report per runtime.

The measuring itself happens on the device, in the artifact's native runner (TVM) or its small
Python harness (ONNX Runtime, LiteRT): warm-up by count and time, timed runs, percentiles,
CPU governor/frequency/temperature before and after, on-device accuracy and a reference check.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from edgecls import __version__
from edgecls.artifact.manifest import manifest_id, read_manifest
from edgecls.bench.places import Place
from edgecls.errors import ArtifactError, UsageError

REPORT_SCHEMA = 1
RUNTIMES = ("tvm", "onnxruntime", "tflite")
PY_HARNESS = "harness/bench_py.py"


@dataclass
class BenchOptions:
    runtimes: tuple[str, ...] = ("tvm",)
    threads: int | None = None
    cores: str | None = None  # big | little | all | CPULIST
    runs: int = 50
    warmup: int = 5
    warmup_ms: float = 0
    min_ms: float = 0
    cooldown_ms: float = 0
    timeout: float = 1800
    extra: dict = field(default_factory=dict)


def parse_runtimes(text: str) -> tuple[str, ...]:
    names = tuple(r.strip() for r in text.split(",") if r.strip())
    bad = [r for r in names if r not in RUNTIMES]
    if not names or bad:
        raise UsageError(f"--runtime takes a comma list of {', '.join(RUNTIMES)}; got '{text}'")
    return names


def resolve_cores(spec: str | None, target: dict) -> list[int] | None:
    """big/little/all or a CPU list (0-3,6) -> cpu ids; None means no pinning."""
    if spec in (None, "", "all"):
        return None
    clusters = target.get("cpus", {})
    if spec in ("big", "little"):
        if not clusters.get(spec):
            raise UsageError(f"target {target['name']} declares no '{spec}' cluster "
                             f"(known: {', '.join(k for k, v in clusters.items() if v) or 'none'})")
        return list(clusters[spec])
    cpus: list[int] = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise UsageError(f"--cores '{spec}' is not big, little, all or a CPU list like 0-3,6")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        cpus += range(lo, hi + 1)
    return sorted(set(cpus))


def _common_flags(opts: BenchOptions, cores: list[int] | None, has_val: bool) -> list[str]:
    flags = ["--input", "reference/input.npy", "--ref-input", "reference/input.npy",
             "--ref-output", "reference/output.npy",
             "--warmup", str(opts.warmup), "--warmup-ms", str(opts.warmup_ms),
             "--runs", str(opts.runs), "--min-ms", str(opts.min_ms), "--cooldown-ms", str(opts.cooldown_ms)]
    if has_val:
        flags += ["--val-x", "reference/val_x.npy", "--val-y", "reference/val_y.npy"]
    if opts.threads:
        flags += ["--threads", str(opts.threads)]
    if cores:
        flags += ["--cores", ",".join(map(str, cores))]
    return flags


def runtime_argv(runtime: str, manifest: dict, place: Place, opts: BenchOptions,
                 cores: list[int] | None) -> list[str]:
    files = manifest.get("files", {})
    flags = _common_flags(opts, cores, "reference/val_x.npy" in files)
    if runtime == "tvm":
        return place.binary_prefix() + ["./edgecls-runner", "--model", "model.so"] + flags
    if PY_HARNESS not in files:
        raise ArtifactError("artifact has no Python harness (compiled by an older edgecls)")
    model = "model.onnx" if runtime == "onnxruntime" else "model.tflite"
    if model not in files:
        hint = (" (ship one: compile a torch model with the edgecls[tflite] extra installed, or --tflite)"
                if runtime == "tflite" else "")
        raise ArtifactError(f"artifact has no {model} for runtime {runtime}{hint}")
    python = getattr(getattr(place, "board", None), "python", None) or sys.executable
    return [python, PY_HARNESS, "--runtime", runtime, "--model", model] + flags


def _fail_line(proc) -> str:
    lines = [ln for ln in (proc.stderr or "").strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit code {proc.returncode}"


def bench_one(artifact: Path, place: Place, opts: BenchOptions, log=lambda m: None) -> list[dict]:
    """Deploy/prepare once, then measure each runtime; returns one report per runtime."""
    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    cores = resolve_cores(opts.cores, manifest["target"])
    remote_dir = place.prepare(artifact, log)
    reports = []
    for runtime in opts.runtimes:
        argv = runtime_argv(runtime, manifest, place, opts, cores)
        log(f"{place.name}: {runtime}: {' '.join(argv)}")
        t0 = time.perf_counter()
        proc = place.run(argv, cwd=remote_dir, timeout=opts.timeout)
        if proc.returncode != 0:
            msg = _fail_line(proc).removeprefix("edgecls-runner: error: ").removeprefix("bench_py: error: ")
            raise ArtifactError(f"{runtime} harness failed on {place.name}: {msg}")
        try:
            measured = json.loads(proc.stdout)
        except json.JSONDecodeError:
            raise ArtifactError(f"{runtime} harness on {place.name} printed no JSON report") from None
        reports.append(make_report(artifact, manifest, place, runtime, opts, cores, measured,
                                   wall_s=time.perf_counter() - t0))
    return reports


def make_report(artifact: Path, manifest: dict, place: Place, runtime: str, opts: BenchOptions,
                cores: list[int] | None, measured: dict, wall_s: float) -> dict:
    stages = manifest.get("stages") or []
    return {
        "schema": REPORT_SCHEMA,
        "kind": "edgecls-bench-report",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "edgecls_version": __version__,
        "board": place.describe(),
        "runtime": runtime,
        "artifact": {
            "id": manifest_id(artifact), "name": artifact.name, "path": str(artifact),
            "model_sha256": manifest["model"]["sha256"], "model_source": manifest["model"]["source"],
            "target": manifest["target"]["name"], "layout": manifest.get("layout", {}).get("chosen"),
            "variant": manifest.get("variant", "fp32"),
            "size_bytes": sum(f["size"] for f in manifest.get("files", {}).values()),
            "macs": next((st["macs"] for st in reversed(stages) if st.get("macs")), None),
            "top1_compiled": next((st["top1"] for st in reversed(stages) if st.get("top1") is not None), None),
        },
        "options": {**{k: v for k, v in asdict(opts).items() if k not in ("extra", "timeout")},
                    "runtimes": list(opts.runtimes), "cores_resolved": cores},
        "device": measured.get("device"),
        "bench": measured.get("bench"),
        "timings_ms": measured.get("timings_ms"),
        "threads": measured.get("threads"),
        "cores": measured.get("cores"),
        "affinity": measured.get("affinity"),
        "runtime_version": measured.get("runtime_version") or ("edgecls-runner" if runtime == "tvm" else None),
        "system": measured.get("system"),
        "accuracy": measured.get("accuracy"),
        "reference": measured.get("reference"),
        "wall_s": round(wall_s, 3),
    }


def report_path(out_dir: Path, report: dict) -> Path:
    stamp = report["created"].replace(":", "").replace("-", "")[:15]
    name = f"{report['board']['name']}-{report['artifact']['name']}-{report['runtime']}-{stamp}.json"
    return Path(out_dir) / re.sub(r"[^A-Za-z0-9._+-]", "_", name)


def write_report(out_dir: Path, report: dict) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = report_path(out_dir, report)
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.rename(path)
    return path
