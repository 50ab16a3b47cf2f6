#!/usr/bin/env python3
"""edgecls Python harness: ONNX Runtime / LiteRT on the board, same JSON as edgecls-runner.

Shipped inside every artifact as harness/bench_py.py and run on the board with the board's own
python3; needs only numpy plus onnxruntime or ai-edge-litert, and its sibling contract.py (options,
statistics, schema). Standalone on purpose: edgecls is not installed on boards. Errors: one line
`bench_py: error: ...` on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from contract import SCHEMA_VERSION, add_measure_options, fail, fps_from_mean, timing_stats  # noqa: E402

NAME = "bench_py"


def read(path: str):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def as_int(text):
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def cpu_sample(cores):
    cores = cores or list(range(os.cpu_count() or 1))
    out = {"cpus": {}, "thermal": {}, "loadavg_1m": None}
    for c in cores:
        base = f"/sys/devices/system/cpu/cpu{c}/cpufreq/"
        out["cpus"][str(c)] = {"governor": read(base + "scaling_governor"),
                               "cur_khz": as_int(read(base + "scaling_cur_freq")),
                               "max_khz": as_int(read(base + "cpuinfo_max_freq") or read(base + "scaling_max_freq"))}
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        t = as_int(read(zone + "/temp"))
        out["thermal"][read(zone + "/type") or os.path.basename(zone)] = None if t is None else t / 1000.0
    load = read("/proc/loadavg")
    out["loadavg_1m"] = float(load.split()[0]) if load else None
    return out


def throttled(samples):
    seen = None
    for s in samples:
        for cpu in s["cpus"].values():
            if cpu["cur_khz"] and cpu["max_khz"]:
                seen = bool(seen) or cpu["cur_khz"] < 0.95 * cpu["max_khz"]
    return seen


def device_facts():
    u = platform.uname()
    model = None
    for line in (read("/proc/cpuinfo") or "").splitlines():
        if line.lower().startswith(("model name", "hardware")):
            model = line.split(":", 1)[1].strip()
            break
    mem = next((as_int(ln.split()[1]) for ln in (read("/proc/meminfo") or "").splitlines()
                if ln.startswith("MemTotal")), None)
    return {"uname": {"sysname": u.system, "release": u.release, "machine": u.machine},
            "cpu_model": model, "online_cpus": os.cpu_count(), "mem_total_kb": mem,
            "glibc": platform.libc_ver()[1] or None, "python": platform.python_version()}


def load_runtime(kind, model_path, threads):
    if kind == "onnxruntime":
        try:
            import onnxruntime as ort
        except ImportError:
            fail(NAME, "onnxruntime is not installed on this board (pip install onnxruntime)")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x})[0], f"onnxruntime {ort.__version__}"
    import numpy as np
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        fail(NAME, "ai-edge-litert is not installed on this board (pip install ai-edge-litert)")
    interp = Interpreter(model_path=model_path, num_threads=threads or None)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    # A full-int8 model takes and returns int8 tensors: quantize the float input with the tensor's
    # own scale/zero-point and dequantize the logits (timed, as TVM and ORT do it inside the graph).
    (in_scale, in_zp), (out_scale, out_zp) = inp["quantization"], out["quantization"]
    int_in = np.issubdtype(inp["dtype"], np.integer) and in_scale
    int_out = np.issubdtype(out["dtype"], np.integer) and out_scale
    lo, hi = (np.iinfo(inp["dtype"]).min, np.iinfo(inp["dtype"]).max) if int_in else (0, 0)

    def run(x):
        if int_in:
            x = np.clip(np.round(x / in_scale + in_zp), lo, hi)
        interp.set_tensor(inp["index"], x.astype(inp["dtype"]))
        interp.invoke()
        y = interp.get_tensor(out["index"])
        return (y.astype(np.float32) - out_zp) * out_scale if int_out else y
    return run, "ai-edge-litert"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runtime", choices=["onnxruntime", "tflite"], required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--input", required=True)
    add_measure_options(ap)
    return ap


def pin(cores_arg):
    """--cores 4,5: this process pinned to them; None leaves the affinity alone. Returns the cores
    the process may run on, pinned or not, as edgecls-runner reports them: one vocabulary."""
    cores = [int(c) for c in cores_arg.split(",")] if cores_arg else None
    if cores:
        try:
            os.sched_setaffinity(0, cores)
        except OSError as exc:
            fail(NAME, f"cannot pin to cores {cores_arg}: {exc.strerror}")
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity API (macOS): what was asked, if anything
        return cores


def reference_check(run, ref_input, ref_output) -> dict:
    import numpy as np
    got, want = run(np.load(ref_input)), np.load(ref_output)
    return {"max_abs_diff": float(np.abs(got.astype(np.float64) - want).max()),
            "top1_match": int(got.reshape(-1)[:want.size].argmax()) == int(want.argmax())}


def accuracy(run, val_x, val_y) -> dict:
    """Top-1/top-5 over the validation batch, image by image (the model takes a batch of one)."""
    import numpy as np
    vx, vy = np.load(val_x), np.load(val_y)
    logits = np.stack([run(vx[i:i + 1]).reshape(-1) for i in range(len(vy))])
    top5 = np.argsort(-logits, axis=1)[:, :5]
    return {"n": int(len(vy)), "top1": float((top5[:, 0] == vy).mean()),
            "top5": float((top5 == vy[:, None]).any(1).mean()) if logits.shape[1] > 5 else None}


def time_runs(run, x, args):
    """Warm-up and timed runs, each by count and extended by time -> (warm-up ms, run ms, last output)."""
    warm, t_start = [], time.perf_counter()
    while len(warm) < args.warmup or (time.perf_counter() - t_start) * 1e3 < args.warmup_ms:
        t = time.perf_counter()
        run(x)
        warm.append((time.perf_counter() - t) * 1e3)
    runs, total = [], 0.0
    while len(runs) < max(1, args.runs) or total < args.min_ms:
        t = time.perf_counter()
        out = run(x)
        runs.append((time.perf_counter() - t) * 1e3)
        total += runs[-1]
        if args.cooldown_ms:
            time.sleep(args.cooldown_ms / 1e3)
    return warm, runs, out


def main():
    args = build_parser().parse_args()
    try:
        import numpy as np
    except ImportError:
        fail(NAME, "numpy is not installed on this board")
    cores = pin(args.cores)
    for path in (args.model, args.input):
        if not os.path.isfile(path):
            fail(NAME, f"{path} not found")
    t0 = time.perf_counter()
    run, version = load_runtime(args.runtime, args.model, args.threads)
    load_ms = (time.perf_counter() - t0) * 1e3
    x = np.load(args.input)
    result = {"schema": SCHEMA_VERSION, "runner": NAME, "runtime_version": version, "model": args.model,
              "device": device_facts(), "cores": cores, "threads": args.threads}
    if args.ref_input and args.ref_output:
        result["reference"] = reference_check(run, args.ref_input, args.ref_output)
    if args.val_x and args.val_y:
        result["accuracy"] = accuracy(run, args.val_x, args.val_y)
    before = cpu_sample(cores)
    warm, runs, out = time_runs(run, x, args)
    after = cpu_sample(cores)
    result["timings_ms"] = {"load": load_ms, "warmup": warm, "runs": runs, **timing_stats(runs)}
    result["bench"] = {"fps": fps_from_mean(result["timings_ms"]["mean"]), "runs": len(runs)}
    flat = np.asarray(out).reshape(-1)
    result["topk"] = [{"index": int(i), "score": float(flat[i])} for i in np.argsort(-flat)[:5]]
    result["system"] = {"before": before, "after": after,
                        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                        "throttled": throttled([before, after])}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
