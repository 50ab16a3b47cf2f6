#!/usr/bin/env python3
"""edgecls TensorRT harness: the artifact's model.onnx on a Jetson GPU through trtexec.

Shipped inside every artifact as harness/bench_trt.py and run on the board with the board's own
python3; needs only the Python standard library and TensorRT's `trtexec` (JetPack installs it as
/usr/src/tensorrt/bin/trtexec). Standalone on purpose: edgecls is not installed on boards.

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
nvpmodel, jetson_clocks, /etc/nv_tegra_release) is a plain function of text, importable by path.
Errors: one line `bench_trt: error: ...` on stderr, exit 2.
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
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_py import as_int, cpu_sample, percentile, throttled  # noqa: E402,F401
from bench_py import device_facts as py_device_facts  # noqa: E402  (sibling files in harness/)
from trt_parse import (  # noqa: E402,F401
    HarnessError, as_float, stats, version_from_banner_number, version_tuple,
    _pkey, parse_summary_stats, parse_trtexec_log, parse_export_times,
    parse_export_profile, parse_export_output, load_json_lenient, parse_tegrastats_line,
    _minmeanmax, summarize_tegrastats, parse_nvpmodel, _kv,
    parse_jetson_clocks, parse_tegra_release, read_npy, npy_floats)

NOT_FOUND = "TensorRT not found on board (no trtexec in PATH or /usr/src/tensorrt/bin)"
TRTEXEC_DIRS = ("/usr/src/tensorrt/bin",)
PRECISIONS = ("auto", "fp32", "fp16", "int8", "best")
PRECISION_FLAGS = {"fp32": [], "fp16": ["--fp16"], "int8": ["--int8"], "best": ["--best"]}
DEFAULT_CACHE = os.path.join("~", ".cache", "edgecls", "trt")


def fail(msg: str) -> None:
    print(f"bench_trt: error: {msg}", file=sys.stderr)
    sys.exit(2)


def read(path: str):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace").replace("\x00", "").strip()
    except OSError:
        return None


_NUM = r"[-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|inf|nan)"






def find_trtexec(env_path: str | None = None) -> str | None:
    found = shutil.which("trtexec", path=env_path)
    if found:
        return found
    for d in TRTEXEC_DIRS:
        p = os.path.join(d, "trtexec")
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return None


def run_tool(argv, timeout=20) -> tuple[int, str]:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        return p.returncode, (p.stdout or "") + (p.stderr or "")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)


def soc_name() -> str | None:
    model = read("/proc/device-tree/model")
    if model:
        return model
    if shutil.which("nvidia-smi"):
        rc, text = run_tool(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"])
        if rc == 0 and text.strip():
            return text.strip().splitlines()[0]
    return None


def device_facts():
    """bench_py's board facts plus the Jetson SoC and L4T release."""
    return {**py_device_facts(), "soc": soc_name(), "l4t": parse_tegra_release(read("/etc/nv_tegra_release"))}


class Tegrastats:
    """tegrastats --interval N for the duration of a `with` block (skipped when absent)."""

    def __init__(self, interval_ms: int = 100):
        self.interval_ms, self.lines, self.proc, self.thread = interval_ms, [], None, None
        self.path = shutil.which("tegrastats")

    def __enter__(self):
        if self.path:
            try:
                self.proc = subprocess.Popen([self.path, "--interval", str(self.interval_ms)],
                                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            except OSError:
                self.proc = None
            if self.proc:
                self.thread = threading.Thread(target=self._read, daemon=True)
                self.thread.start()
        return self

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def __exit__(self, *exc):
        if self.proc:
            # A run shorter than one interval still gets one reading (tegrastats prints its first
            # line after one interval): wait up to three intervals for it before stopping.
            deadline = time.monotonic() + 3 * self.interval_ms / 1000.0 + 1.0
            while not self.lines and self.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.thread.join(5)

    def summary(self) -> dict | None:
        return summarize_tegrastats(self.lines, self.interval_ms) if self.path else None


def jetson_tools() -> dict:
    """nvpmodel -q and jetson_clocks --show when installed (jetson_clocks needs root: sudo -n is tried)."""
    out = {"nvpmodel": None, "clocks": None, "tools_missing": []}
    if shutil.which("nvpmodel"):
        rc, text = run_tool(["nvpmodel", "-q"])
        out["nvpmodel"] = parse_nvpmodel(text) if rc == 0 else {"error": (text.strip().splitlines() or ["?"])[-1]}
    else:
        out["tools_missing"].append("nvpmodel")
    if shutil.which("jetson_clocks"):
        rc, text = run_tool(["jetson_clocks", "--show"])
        if rc != 0 and shutil.which("sudo"):
            rc, text = run_tool(["sudo", "-n", "jetson_clocks", "--show"])
        out["clocks"] = parse_jetson_clocks(text) if rc == 0 else {"error": (text.strip().splitlines() or ["?"])[-1]}
    else:
        out["tools_missing"].append("jetson_clocks")
    if not shutil.which("tegrastats"):
        out["tools_missing"].append("tegrastats")
    return out


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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="model.onnx")
    ap.add_argument("--precision", choices=PRECISIONS, default="auto")
    ap.add_argument("--input-name", help="ONNX input tensor name (for --loadInputs)")
    ap.add_argument("--input")
    ap.add_argument("--ref-input")
    ap.add_argument("--ref-output")
    ap.add_argument("--val-x")
    ap.add_argument("--val-y")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--warmup-ms", type=float, default=0)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--min-ms", type=float, default=0)
    ap.add_argument("--cooldown-ms", type=float, default=0)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--cores")
    ap.add_argument("--cache-dir", default=os.environ.get("EDGECLS_TRT_CACHE") or DEFAULT_CACHE)
    ap.add_argument("--layer-profile", action="store_true", help="also --exportProfile (a separate profiling run)")
    ap.add_argument("--tegrastats-ms", type=int, default=100)
    args = ap.parse_args(argv)
    try:
        print(json.dumps(measure(args)))
    except HarnessError as exc:
        fail(str(exc))


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
    model_sha = sha256_file(args.model)
    facts = {"soc": device["soc"], "l4t": device["l4t"], "tensorrt": version, "model_sha256": model_sha,
             "precision": precision, "machine": device["uname"]["machine"]}
    device_tag = hashlib.sha256(json.dumps([facts["soc"], facts["l4t"], version]).encode()).hexdigest()[:12]
    cache_dir = os.path.expanduser(args.cache_dir)
    os.makedirs(cache_dir, exist_ok=True)
    key = engine_key(facts)
    engine = os.path.join(cache_dir, key + ".engine")
    hit = os.path.isfile(engine) and os.path.getsize(engine) > 0
    sidecar = os.path.join(cache_dir, key + ".json")

    def build_now():
        b = build_engine(trtexec, args.model, engine, precision, version, cache_dir, device_tag)
        with open(sidecar, "w") as f:
            json.dump({**facts, **b, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}, f, indent=1)
        return b

    build = None if hit else build_now()

    jetson = jetson_tools()
    work = tempfile.mkdtemp(prefix="edgecls-trt-")
    try:
        result = None
        for attempt in (0, 1):
            try:
                result = time_engine(trtexec, engine, args, version, work)
                break
            except HarnessError:
                if attempt or not hit:
                    raise
                # A cached engine that no longer loads (TensorRT updated in place): rebuild once.
                os.unlink(engine)
                hit = False
                build = build_now()
        parsed, times, outputs, profile = result["log"], result["times"], result["outputs"], result["profile"]
        tegra, system = result["tegrastats"], result["system"]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    version = parsed["tensorrt_version"] or version
    summary = parsed["summary"]
    built = build
    if built is None:  # cache hit: what the build recorded next to the engine
        try:
            with open(sidecar) as f:
                built = json.load(f)
        except (OSError, ValueError):
            built = {}

    def metric(name):  # per-query records when trtexec wrote them, else its printed summary
        return (stats(times[name]) if times else None) or summary.get(name)

    runs = list(times["latency"]) if times else []
    t = stats(runs)
    if t is None:
        s = summary.get("latency") or {}
        t = {k: s.get(k) for k in ("mean", "median", "p90", "p95", "p99", "min", "max", "std")}
    load_s = parsed["engine_load_s"]
    mean, gpu = t.get("mean"), metric("gpu_compute")
    tegra_rails = (tegra or {}).get("rails_mw") or {}
    vin = tegra_rails.get("VDD_IN") or tegra_rails.get("POM_5V_IN")
    return {
        "schema": 2, "runner": "bench_trt", "model": args.model,
        "runtime_version": f"TensorRT {version}" if version else "TensorRT",
        "device": {**device, "gpu": parsed["device"] or None}, "cores": cores, "threads": None,
        "timings_ms": {"load": load_s * 1e3 if load_s is not None else None, "warmup": [], "runs": runs, **t},
        "bench": {"fps": 1000.0 / mean if mean else None,
                  "runs": len(runs) or (parsed["trace"] or {}).get("queries"),
                  "metric": "trtexec latencyMs: H2D + GPU compute + D2H of one query",
                  "warmup_ms": warmup_ms_for(args), "warmup_queries": (parsed["warmup"] or {}).get("queries")},
        "reference": reference_check(args, outputs),
        "accuracy": None,  # the validation batch would cost one trtexec run per image
        "system": system,
        "tensorrt": {
            "version": version, "trtexec": trtexec, "precision": precision,
            "precision_requested": args.precision, "precision_flags": PRECISION_FLAGS[precision],
            "precision_reported": built.get("precision_reported"), "qdq_model": qdq, "notes": notes,
            "engine": {"cache_hit": hit, "key": key, "path": engine, "size_bytes": os.path.getsize(engine),
                       "build_s": build["build_s"] if build else None, "load_s": load_s, "cache_facts": facts,
                       "built_s_when_cached": None if build else built.get("build_s")},
            "throughput_qps": parsed["throughput_qps"],
            "latency_ms": metric("latency"), "gpu_compute_ms": gpu, "h2d_ms": metric("h2d"),
            "d2h_ms": metric("d2h"), "enqueue_ms": metric("enqueue"),
            "gpu_compute_share_of_latency": (round(gpu["median"] / t["median"], 4)
                                             if gpu and gpu.get("median") and t.get("median") else None),
            "gpu_compute_cv_pct": parsed["gpu_compute_cv_pct"],
            "total_host_walltime_s": parsed["total_host_walltime_s"],
            "total_gpu_compute_s": parsed["total_gpu_compute_s"],
            "summary": summary, "warnings": parsed["warnings"], "layer_profile": profile,
        },
        "jetson": {**jetson, "tegrastats": tegra,
                   # mean input power over the run / queries per second = energy per query
                   "energy_mj_per_query": (round(vin["mean"] / parsed["throughput_qps"], 4)
                                           if vin and parsed["throughput_qps"] else None)},
    }


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
