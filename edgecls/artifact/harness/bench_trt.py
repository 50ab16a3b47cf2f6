#!/usr/bin/env python3
"""edgecls TensorRT harness: the artifact's model.onnx on a Jetson GPU through trtexec.

Shipped inside every artifact as harness/bench_trt.py and run on the board with the board's own
python3; needs only the Python standard library, its sibling files in harness/ and TensorRT's
`trtexec` (JetPack installs it as /usr/src/tensorrt/bin/trtexec). Standalone on purpose: edgecls
is not installed on boards.

What it does:
  1. finds trtexec (PATH, then /usr/src/tensorrt/bin); none -> exit 2 with one line on stderr;
  2. builds a TensorRT engine from model.onnx (fp32, or the QDQ int8 graph of `--quantize
     ptq|qat`: explicit quantization, no calibration cache) with --fp16/--int8/--best per
     --precision, cached in ~/.cache/edgecls/trt/ under a key of SoC, L4T release, TensorRT
     version, precision and the model's sha256 (engines are not portable between any of them);
  3. times the engine with trtexec (--warmUp, --iterations, --exportTimes, --exportOutput) while
     sampling tegrastats, and reads nvpmodel -q / jetson_clocks --show when present;
  4. prints one JSON object with the fields edgecls-runner prints (timings_ms, bench, device,
     reference, system) plus "tensorrt" and "jetson" sections.

Every parser (trtexec log, --exportTimes / --exportProfile / --exportOutput JSON, tegrastats,
nvpmodel, jetson_clocks, /etc/nv_tegra_release) is a plain function of text in trt_parse.py; the
Jetson tools are run by jetson.py, and the options, statistics and report schema shared with
edgecls-runner and bench_py.py are contract.py's. Errors: one line `bench_trt: error: ...` on
stderr, exit 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_py import cpu_sample, throttled  # noqa: E402  (sibling files in harness/)
from contract import (  # noqa: E402
    PRECISIONS, SCHEMA_VERSION, STAT_KEYS, add_measure_options, fail, fps_from_mean, timing_stats)
from jetson import Tegrastats, device_facts, jetson_tools, run_tool  # noqa: E402
from trt_parse import (  # noqa: E402
    HarnessError, load_json_lenient, npy_floats, parse_export_output, parse_export_profile, parse_export_times,
    parse_trtexec_log, read_npy, version_tuple)

NAME = "bench_trt"
NOT_FOUND = "TensorRT not found on board (no trtexec in PATH or /usr/src/tensorrt/bin)"
TRTEXEC_DIRS = ("/usr/src/tensorrt/bin",)
PRECISION_FLAGS = {"fp32": [], "fp16": ["--fp16"], "int8": ["--int8"], "best": ["--best"]}
DEFAULT_CACHE = os.path.join("~", ".cache", "edgecls", "trt")


def find_trtexec(env_path: str | None = None) -> str | None:
    found = shutil.which("trtexec", path=env_path)
    if found:
        return found
    for d in TRTEXEC_DIRS:
        p = os.path.join(d, "trtexec")
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return None


def has_qdq(model_path: str) -> bool:
    """Q/DQ op types are plain strings in the ONNX protobuf: no onnx package needed to spot them."""
    with open(model_path, "rb") as f:
        data = f.read()
    return b"QuantizeLinear" in data and b"DequantizeLinear" in data


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def engine_key(facts: dict) -> str:
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]
    return f"{facts['model_sha256'][:16]}-{facts['precision']}-{digest}"


def resolve_precision(requested: str, qdq: bool) -> tuple[str, list[str]]:
    notes = []
    precision = requested
    if requested == "auto":
        precision = "int8" if qdq else "fp32"
        notes.append(f"precision auto -> {precision} ({'QDQ int8 model' if qdq else 'no Q/DQ nodes in model.onnx'})")
    if precision == "int8" and not qdq:
        notes.append("int8 requested for a model without Q/DQ nodes: TensorRT has no scales (no calibration "
                     "cache is used), so trtexec times int8 kernels with placeholder ranges; the outputs are "
                     "not meaningful. Compile with --quantize ptq|qat for a QDQ model.")
    if qdq and precision in ("fp32", "fp16"):
        notes.append("QDQ model built without --int8: TensorRT needs int8 enabled to run the quantized layers "
                     "in int8 (use --precision int8 or best)")
    return precision, notes


def trtexec_run(argv, log_path=None) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    try:
        p = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise HarnessError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    text = (p.stdout or "") + (p.stderr or "")
    if log_path:
        with open(log_path, "w") as f:
            f.write(text)
    return p.returncode, text, time.perf_counter() - t0


def last_error(text: str) -> str:
    """The first [E] line: trtexec's later errors ('Engine set up failed') only restate it."""
    errs = [e for e in parse_trtexec_log(text)["errors"] if e.strip()]
    if errs:
        return errs[0][:400]
    lines = [ln for ln in text.strip().splitlines() if ln.strip() and not ln.startswith("&&&&")]
    return lines[-1][:400] if lines else "no output"


def build_engine(trtexec, model, engine, precision, version, cache_dir, device_tag):
    """Build into a temporary name, rename when complete: a half-written engine is never reused."""
    partial = f"{engine}.partial-{os.getpid()}"
    timing_cache = os.path.join(cache_dir, f"timing-{device_tag}.cache")
    skip = "--skipInference" if version_tuple(version) >= (8, 6) else "--buildOnly"
    argv = [trtexec, f"--onnx={model}", f"--saveEngine={partial}", *PRECISION_FLAGS[precision],
            f"--timingCacheFile={timing_cache}", skip]
    rc, text, wall = trtexec_run(argv, engine + ".build.log")
    if rc != 0 or not os.path.isfile(partial) or os.path.getsize(partial) == 0:
        try:
            os.unlink(partial)
        except OSError:
            pass
        raise HarnessError(f"TensorRT could not build an engine from {model}: {last_error(text)}")
    os.replace(partial, engine)
    parsed = parse_trtexec_log(text)
    return {"build_s": parsed["engine_build_s"] if parsed["engine_build_s"] is not None else round(wall, 3),
            "build_wall_s": round(wall, 3), "precision_reported": parsed["precision"], "warnings": parsed["warnings"]}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="model.onnx")
    ap.add_argument("--precision", choices=PRECISIONS, default="auto")
    ap.add_argument("--input-name", help="ONNX input tensor name (for --loadInputs)")
    ap.add_argument("--input")
    add_measure_options(ap, runs=50)
    ap.add_argument("--cache-dir", default=os.environ.get("EDGECLS_TRT_CACHE") or DEFAULT_CACHE)
    ap.add_argument("--layer-profile", action="store_true", help="also --exportProfile (a separate profiling run)")
    ap.add_argument("--tegrastats-ms", type=int, default=100)
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        print(json.dumps(measure(args)))
    except HarnessError as exc:
        fail(NAME, str(exc))


def measure(args) -> dict:
    trtexec = find_trtexec()
    if trtexec is None:
        raise HarnessError(NOT_FOUND)
    if not os.path.isfile(args.model):
        raise HarnessError(f"{args.model} not found")
    cores = [int(c) for c in args.cores.split(",")] if args.cores else None
    if cores:
        try:
            os.sched_setaffinity(0, cores)  # trtexec inherits it: its host threads stay on these cores
        except OSError as exc:
            raise HarnessError(f"cannot pin to cores {args.cores}: {exc.strerror}") from None

    _rc, text = run_tool([trtexec, "--help"], timeout=60)
    version = parse_trtexec_log(text)["tensorrt_version"]
    qdq = has_qdq(args.model)
    precision, notes = resolve_precision(args.precision, qdq)
    device = device_facts()
    plan = engine_plan(args, device, version, precision)
    build = None if plan["hit"] else build_cached(trtexec, args.model, plan, version)
    jetson = jetson_tools()
    result, build = time_with_rebuild(trtexec, args, plan, version, build)
    version = result["log"]["tensorrt_version"] or version
    built = build
    if built is None:  # cache hit: what the build recorded next to the engine
        try:
            with open(plan["sidecar"]) as f:
                built = json.load(f)
        except (OSError, ValueError):
            built = {}
    t, runs, metric = run_statistics(result)
    load_s, parsed = result["log"]["engine_load_s"], result["log"]
    return {
        "schema": SCHEMA_VERSION, "runner": NAME, "model": args.model,
        "runtime_version": f"TensorRT {version}" if version else "TensorRT",
        "device": {**device, "gpu": parsed["device"] or None}, "cores": cores, "threads": None,
        "timings_ms": {"load": load_s * 1e3 if load_s is not None else None, "warmup": [], "runs": runs, **t},
        "bench": {"fps": fps_from_mean(t.get("mean")),
                  "runs": len(runs) or (parsed["trace"] or {}).get("queries"),
                  "metric": "trtexec latencyMs: H2D + GPU compute + D2H of one query",
                  "warmup_ms": warmup_ms_for(args), "warmup_queries": (parsed["warmup"] or {}).get("queries")},
        "reference": reference_check(args, result["outputs"]),
        "accuracy": None,  # the validation batch would cost one trtexec run per image
        "system": result["system"],
        "tensorrt": tensorrt_section(trtexec, args, version, precision, notes, qdq, plan, build, built,
                                     result, t, metric),
        "jetson": {**jetson, "tegrastats": result["tegrastats"],
                   "energy_mj_per_query": energy_per_query(result["tegrastats"], parsed["throughput_qps"])},
    }


def engine_plan(args, device: dict, version, precision: str) -> dict:
    """Where the engine for this model, precision and board lives in the cache, and whether it is there."""
    facts = {"soc": device["soc"], "l4t": device["l4t"], "tensorrt": version, "model_sha256": sha256_file(args.model),
             "precision": precision, "machine": device["uname"]["machine"]}
    device_tag = hashlib.sha256(json.dumps([facts["soc"], facts["l4t"], version]).encode()).hexdigest()[:12]
    cache_dir = os.path.expanduser(args.cache_dir)
    os.makedirs(cache_dir, exist_ok=True)
    key = engine_key(facts)
    engine = os.path.join(cache_dir, key + ".engine")
    return {"facts": facts, "key": key, "engine": engine, "sidecar": os.path.join(cache_dir, key + ".json"),
            "cache_dir": cache_dir, "device_tag": device_tag,
            "hit": os.path.isfile(engine) and os.path.getsize(engine) > 0}


def build_cached(trtexec, model, plan: dict, version) -> dict:
    """Builds the engine into the cache, with a sidecar JSON of the facts and the build."""
    b = build_engine(trtexec, model, plan["engine"], plan["facts"]["precision"], version, plan["cache_dir"],
                     plan["device_tag"])
    with open(plan["sidecar"], "w") as f:
        json.dump({**plan["facts"], **b, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}, f, indent=1)
    return b


def time_with_rebuild(trtexec, args, plan: dict, version, build):
    """time_engine(); a cached engine that no longer loads (TensorRT updated in place) is rebuilt
    once. -> (its result, the build or None); plan["hit"] turns False on a rebuild."""
    work = tempfile.mkdtemp(prefix="edgecls-trt-")
    try:
        for attempt in (0, 1):
            try:
                return time_engine(trtexec, plan["engine"], args, version, work), build
            except HarnessError:
                if attempt or not plan["hit"]:
                    raise
                os.unlink(plan["engine"])
                plan["hit"] = False
                build = build_cached(trtexec, args.model, plan, version)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_statistics(result: dict):
    """-> (latency statistics, per-query latencies, metric(name)): from trtexec's per-query
    records when it wrote them, else from its printed summary."""
    times, summary = result["times"], result["log"]["summary"]

    def metric(name):
        return (timing_stats(times[name]) if times else None) or summary.get(name)

    runs = list(times["latency"]) if times else []
    t = timing_stats(runs)
    if t is None:
        s = summary.get("latency") or {}
        t = {k: s.get(k) for k in STAT_KEYS}
    return t, runs, metric


def tensorrt_section(trtexec, args, version, precision, notes, qdq, plan, build, built, result, t, metric) -> dict:
    parsed, gpu = result["log"], metric("gpu_compute")
    return {
        "version": version, "trtexec": trtexec, "precision": precision,
        "precision_requested": args.precision, "precision_flags": PRECISION_FLAGS[precision],
        "precision_reported": built.get("precision_reported"), "qdq_model": qdq, "notes": notes,
        "engine": {"cache_hit": plan["hit"], "key": plan["key"], "path": plan["engine"],
                   "size_bytes": os.path.getsize(plan["engine"]),
                   "build_s": build["build_s"] if build else None, "load_s": parsed["engine_load_s"],
                   "cache_facts": plan["facts"], "built_s_when_cached": None if build else built.get("build_s")},
        "throughput_qps": parsed["throughput_qps"],
        "latency_ms": metric("latency"), "gpu_compute_ms": gpu, "h2d_ms": metric("h2d"),
        "d2h_ms": metric("d2h"), "enqueue_ms": metric("enqueue"),
        "gpu_compute_share_of_latency": (round(gpu["median"] / t["median"], 4)
                                         if gpu and gpu.get("median") and t.get("median") else None),
        "gpu_compute_cv_pct": parsed["gpu_compute_cv_pct"],
        "total_host_walltime_s": parsed["total_host_walltime_s"],
        "total_gpu_compute_s": parsed["total_gpu_compute_s"],
        "summary": parsed["summary"], "warnings": parsed["warnings"], "layer_profile": result["profile"],
    }


def energy_per_query(tegra: dict | None, throughput_qps):
    """Mean input power over the run / queries per second = energy per query (mJ)."""
    rails = (tegra or {}).get("rails_mw") or {}
    vin = rails.get("VDD_IN") or rails.get("POM_5V_IN")
    return round(vin["mean"] / throughput_qps, 4) if vin and throughput_qps else None


def warmup_ms_for(args) -> float:
    """trtexec warms up by time only: --warmup-ms, else its default 200 ms when --warmup asks for any."""
    return args.warmup_ms if args.warmup_ms > 0 else (200.0 if args.warmup > 0 else 0.0)


def time_engine(trtexec, engine, args, version, work):
    v = version_tuple(version)
    times_path = os.path.join(work, "times.json")
    out_path = os.path.join(work, "output.json")
    prof_path = os.path.join(work, "profile.json")
    warm = warmup_ms_for(args)
    duration = math.ceil(args.min_ms / 1000.0) if args.min_ms > 0 else 0
    argv = [trtexec, f"--loadEngine={engine}", f"--warmUp={warm:g}", f"--iterations={max(1, args.runs)}",
            f"--duration={duration}", "--percentile=50,90,99" if v >= (8, 5) else "--percentile=99",
            f"--exportTimes={times_path}"]
    if args.cooldown_ms:
        argv.append(f"--idleTime={round(args.cooldown_ms)}")
    if args.ref_input and args.input_name:
        _shape, _descr, data = read_npy(args.ref_input)
        raw = os.path.join(work, "input.bin")
        with open(raw, "wb") as f:
            f.write(data)
        name = f"'{args.input_name}'" if ":" in args.input_name else args.input_name
        argv += [f"--loadInputs={name}:{raw}", f"--exportOutput={out_path}"]
    if args.layer_profile:
        argv += [f"--exportProfile={prof_path}"] + (["--separateProfileRun"] if v < (11,) else [])
    before = cpu_sample(None)
    with Tegrastats(args.tegrastats_ms) as tstats:
        rc, text, _ = trtexec_run(argv, os.path.join(work, "run.log"))
    after = cpu_sample(None)
    if rc != 0:
        raise HarnessError(f"trtexec failed on the engine: {last_error(text)}")
    parsed = parse_trtexec_log(text)
    times = outputs = profile = None
    if os.path.isfile(times_path):
        with open(times_path) as f:
            times = parse_export_times(load_json_lenient(f.read()), warm)
    if os.path.isfile(out_path):
        with open(out_path) as f:
            outputs = parse_export_output(load_json_lenient(f.read()))
    if os.path.isfile(prof_path):
        with open(prof_path) as f:
            profile = parse_export_profile(load_json_lenient(f.read()))
    return {"log": parsed, "times": times, "outputs": outputs, "profile": profile, "tegrastats": tstats.summary(),
            "system": {"before": before, "after": after, "peak_rss_kb": None,
                       "throttled": throttled([before, after])}}


def reference_check(args, outputs) -> dict | None:
    if not outputs or not args.ref_output:
        return None
    want = npy_floats(args.ref_output)
    got = next(iter(outputs.values()))[1]
    if len(got) < len(want):
        return {"max_abs_diff": None, "top1_match": None, "note": f"trtexec printed {len(got)} of {len(want)} values"}
    got = got[:len(want)]
    return {"max_abs_diff": max(abs(a - b) for a, b in zip(got, want)),
            "top1_match": max(range(len(got)), key=got.__getitem__) == max(range(len(want)), key=want.__getitem__),
            "note": "trtexec --exportOutput prints 6 significant digits"}


if __name__ == "__main__":
    main()
