"""The benchmark job: artifact + place + options -> one JSON report per runtime.

The measuring itself happens on the device, in the artifact's native runner (TVM) or its small
Python harnesses (ONNX Runtime, LiteRT; TensorRT): warm-up by count and time, timed runs,
percentiles, CPU governor/frequency/temperature before and after, on-device accuracy and a
reference check. Their options and JSON are one contract: edgecls/artifact/harness/contract.py.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from edgecls import __version__
from edgecls.artifact.harness.contract import error_message, harness_flags
from edgecls.artifact.manifest import manifest_id, read_manifest
from edgecls.bench.load import background_load
from edgecls.bench.places import Place
from edgecls.errors import ArtifactError, UsageError

REPORT_SCHEMA = 1
RUNTIMES = ("tvm", "onnxruntime", "tflite", "tensorrt")
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
    batches: tuple[int, ...] = (1,)  # TVM: model_bN.so of an artifact compiled with --batch-sizes
    latency_budget_ms: float | None = None  # recommend the batch with most images/s within it
    count: bool = False  # instructions per inference under qemu instead of timing (bench/counted.py)
    count_cpu: str | None = None  # the qemu CPU model to count on; default: the target's first
    background_load: int = 0  # busy processes on the place while each runtime is measured (bench/load.py)
    profile: bool = False  # time per kernel in the Relax VM on this machine (bench/profiled.py)


class PartialBench(ArtifactError):
    """Some runtimes failed on a place; the reports of the others are kept (`reports`)."""

    def __init__(self, message: str, reports: list[dict]):
        super().__init__(message)
        self.reports = reports


def parse_runtimes(text: str | None) -> tuple[str, ...]:
    """() = the artifact's default runtime; ("auto",) = every CPU runtime it carries, winner recorded."""
    if text is None:
        return ()
    if text.strip() == "auto":
        return ("auto",)
    names = tuple(r.strip() for r in text.split(",") if r.strip())
    bad = [r for r in names if r not in RUNTIMES]
    if not names or bad:
        raise UsageError(f"--runtime takes auto or a comma list of {', '.join(RUNTIMES)}; got '{text}'")
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


def _common_flags(opts: BenchOptions, cores: list[int] | None, has_val: bool, batch: int = 1) -> list[str]:
    """The options every harness takes (harness/contract.py), for this batch's files."""
    from edgecls.artifact.batches import input_name, output_name
    val = has_val and batch == 1  # the validation batch runs image by image on the batch-1 model
    return harness_flags(input=input_name(batch), ref_input=input_name(batch), ref_output=output_name(batch),
                         warmup=opts.warmup, warmup_ms=opts.warmup_ms, runs=opts.runs, min_ms=opts.min_ms,
                         cooldown_ms=opts.cooldown_ms, val_x="reference/val_x.npy" if val else None,
                         val_y="reference/val_y.npy" if val else None, threads=opts.threads or None,
                         cores=",".join(map(str, cores)) if cores else None)


def runtime_argv(runtime: str, manifest: dict, place: Place, opts: BenchOptions,
                 cores: list[int] | None, batch: int = 1) -> list[str]:
    files = manifest.get("files", {})
    flags = _common_flags(opts, cores, "reference/val_x.npy" in files, batch)
    if runtime == "tvm":
        from edgecls.artifact.batches import library_name
        if library_name(batch) not in files:
            raise ArtifactError(f"artifact has no batch {batch} model (compile it with --batch-sizes "
                                f"{','.join(map(str, sorted({1, batch})))})")
        return place.binary_prefix() + ["./edgecls-runner", "--model", library_name(batch)] + flags
    if runtime == "tensorrt":
        from edgecls.bench.tensorrt import tensorrt_argv
        return tensorrt_argv(manifest, place, opts, flags)
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
    if opts.count:
        from edgecls.bench.counted import check_countable, count_report
        check_countable(place, opts.runtimes, manifest["target"]["arch"])
        return [count_report(artifact, manifest, place, opts, batch, log) for batch in opts.batches]
    from edgecls.bench.choice import AUTO, choose_runtime, default_runtimes, expand_auto
    from edgecls.bench.threads import choose_threads
    choice = choose_threads(opts.threads, cores, manifest["target"], place, opts.cores)
    opts, cores = replace(opts, threads=choice.threads, extra={**opts.extra, "threads_how": choice.how}), choice.cores
    log(f"{place.name}: threads {choice.threads} ({choice.how})")
    if opts.profile:
        from edgecls.bench.profiled import check_profilable, profile_report
        check_profilable(place, opts.runtimes)
        return [profile_report(artifact, manifest, place, opts, cores, remote_dir, batch, log)
                for batch in opts.batches]
    auto = opts.runtimes == (AUTO,)
    runtimes = expand_auto(manifest) if auto else (opts.runtimes or default_runtimes(manifest))
    reports, failures, unavailable = [], [], []
    for runtime in runtimes:
        # Other runtimes run the batch-1 ONNX / TFLite files: only TVM has one library per batch.
        for batch in (opts.batches if runtime == "tvm" else (1,)):
            try:
                reports.append(_measure(artifact, manifest, place, runtime, opts, cores, remote_dir, batch, log))
            except ArtifactError as exc:  # auto: a runtime the board lacks is not a failure
                (unavailable if auto and runtime != "tvm" else failures).append(str(exc))
    if len(opts.batches) > 1:
        recommend_batch(reports, opts.latency_budget_ms)
    if auto:
        choose_runtime(reports, unavailable)
    if failures:
        raise PartialBench("; ".join(failures), reports)
    return reports


def _measure(artifact, manifest, place, runtime, opts, cores, remote_dir, batch, log) -> dict:
    argv = runtime_argv(runtime, manifest, place, opts, cores, batch)
    log(f"{place.name}: {runtime}: {' '.join(argv)}")
    t0 = time.perf_counter()
    with background_load(place, opts.background_load, bound_s=opts.timeout + 30) as load:
        proc = place.run(argv, cwd=remote_dir, timeout=opts.timeout)
    if proc.returncode != 0:
        raise ArtifactError(f"{runtime} harness failed on {place.name}: {error_message(_fail_line(proc))}")
    try:
        measured = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise ArtifactError(f"{runtime} harness on {place.name} printed no JSON report") from None
    report = make_report(artifact, manifest, place, runtime, opts, cores, measured,
                         wall_s=time.perf_counter() - t0, batch=batch)
    report["batch"] = batch
    report["background_load"] = load
    if report.get("bench") and report["bench"].get("fps"):
        report["bench"]["images_per_s"] = round(report["bench"]["fps"] * batch, 3)
    return report


def recommend_batch(reports: list[dict], budget_ms: float | None) -> dict | None:
    """The TVM batch size with the most images/s whose median latency fits the budget; written
    into every TVM report of the run as `batch_recommendation`."""
    tvm = [r for r in reports if r["runtime"] == "tvm" and (r.get("bench") or {}).get("images_per_s")]
    fits = [r for r in tvm if budget_ms is None or r["timings_ms"]["median"] <= budget_ms]
    if not tvm:
        return None
    best = max(fits, key=lambda r: r["bench"]["images_per_s"]) if fits else None
    rec = {"latency_budget_ms": budget_ms, "batch": best["batch"] if best else None,
           "images_per_s": best["bench"]["images_per_s"] if best else None,
           "median_ms": best["timings_ms"]["median"] if best else None,
           "measured": {str(r["batch"]): {"median_ms": r["timings_ms"]["median"],
                                          "images_per_s": r["bench"]["images_per_s"]} for r in tvm},
           **({} if best else {"reason": f"no batch size has a median within {budget_ms} ms"})}
    for r in tvm:
        r["batch_recommendation"] = rec
    return rec


MODEL_FILES = {"onnxruntime": "model.onnx", "tensorrt": "model.onnx", "tflite": "model.tflite"}


def artifact_section(artifact: Path, manifest: dict, runtime: str, batch: int = 1) -> dict:
    """What the report says about the artifact: model, variant, graph facts and sizes.

    Graph facts (MACs, parameters, quantization) come from the manifest's `graph` section; older
    manifests lack it, so MACs fall back to the optimize stages. Two sizes: the file this runtime
    loads (model.so for TVM: what a variant changes) and the whole artifact (what a board stores).
    """
    stages, graph, model = manifest.get("stages") or [], manifest.get("graph") or {}, manifest["model"]
    files = manifest.get("files", {})
    model_file = (manifest.get("batches") or {}).get(str(batch), "model.so") if runtime == "tvm" \
        else MODEL_FILES.get(runtime)
    return {
        "id": manifest_id(artifact), "name": artifact.name, "path": str(artifact),
        "model_sha256": model["sha256"], "model_source": model["source"],
        "model_name": model.get("name") or Path(model["source"]).stem,
        "model_origin_sha256": model.get("origin_sha256") or model["sha256"],
        "target": manifest["target"]["name"], "layout": manifest.get("layout", {}).get("chosen"),
        "variant": manifest.get("variant", "fp32"),
        "variant_detected": graph.get("variant"), "quantization": graph.get("quantization"),
        "size_bytes": sum(f["size"] for f in files.values()),
        "model_file": model_file, "model_bytes": (files.get(model_file) or {}).get("size"),
        "macs": graph.get("macs") or next((st["macs"] for st in reversed(stages) if st.get("macs")), None),
        "params": graph.get("params") or next((st["params"] for st in reversed(stages) if st.get("params")), None),
        "top1_compiled": next((st["top1"] for st in reversed(stages) if st.get("top1") is not None), None),
    }


def make_report(artifact: Path, manifest: dict, place: Place, runtime: str, opts: BenchOptions,
                cores: list[int] | None, measured: dict, wall_s: float, batch: int = 1) -> dict:
    return {
        "schema": REPORT_SCHEMA,
        "kind": "edgecls-bench-report",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "edgecls_version": __version__,
        "board": place.describe(),
        "runtime": runtime,
        "artifact": artifact_section(artifact, manifest, runtime, batch),
        "options": {**{k: v for k, v in asdict(opts).items() if k not in ("extra", "timeout")},
                    "runtimes": list(opts.runtimes), "cores_resolved": cores,
                    "threads_how": opts.extra.get("threads_how")},
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
        **{k: measured[k] for k in ("tensorrt", "jetson") if k in measured},
    }


def report_path(out_dir: Path, report: dict) -> Path:
    """<board>-<artifact>-<runtime>[-bN][-loadN]-<UTC stamp to the second>.json; a report of the
    same name already there (two benches within one second: a quiet run right after a loaded
    one, measured) gets -2, -3 ... rather than being overwritten."""
    stamp = report["created"].replace(":", "").replace("-", "")[:15]
    batch = f"-b{report['batch']}" if report.get("batch", 1) != 1 else ""
    load = f"-load{report['background_load']['processes']}" if report.get("background_load") else ""
    name = re.sub(r"[^A-Za-z0-9._+-]", "_",
                  f"{report['board']['name']}-{report['artifact']['name']}-{report['runtime']}{batch}{load}-{stamp}")
    path, n = Path(out_dir) / f"{name}.json", 1
    while path.exists():
        n += 1
        path = Path(out_dir) / f"{name}-{n}.json"
    return path


def write_report(out_dir: Path, report: dict) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = report_path(out_dir, report)
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.rename(path)
    return path
