"""Batch-1 latency on this machine: edgecls' TVM artifacts vs ONNX Runtime, LiteRT and torch.

MobileNetV2- and ResNet-18-style networks, and with --nets all the issue-16 families (ViT-tiny,
MobileViT-XS at its own 256x256, EfficientNet-B0, ConvNeXt-Pico) (random weights: latency does not
depend on them), fp32, 224x224, every engine interleaved round by round in one process so machine noise hits all alike:
- onnxruntime (all graph optimisations), ai-edge-litert (XNNPACK, fp32 .tflite from litert-torch),
  torch eager;
- TVM naive (`--no-schedules`: TVM 0.27's plain loop nests; only with --naive, it is slow),
  TVM zero-trial (edgecls' rule-based schedules), TVM tuned at each --trials budget (MetaSchedule,
  local measurement, one tuning database per budget).
Prints medians, ratios against the best peer (the fastest of ORT / LiteRT / torch) and achieved
GFLOPS next to the CPU's fp32 peak, and writes JSON. Not a test: run it on a quiet machine.

    .venv/bin/python benchmarks/host_latency.py [--nets mobilenet_v2,resnet18] [--trials 500,2000]
        [--rounds 5] [--threads 2] [--naive] [--db-root DIR] [--out benchmarks/results/host_latency.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from engines import litert_engine  # noqa: E402
from edgecls.artifact.reference import onnx_session  # noqa: E402
from edgecls.compile import tvm as tvm_adapter  # noqa: E402
from edgecls.models import REFERENCE_NETS as NETS  # noqa: E402
from edgecls.optimize.prune import count_macs_params  # noqa: E402
from edgecls.pipeline import CompileRequest, compile_artifact  # noqa: E402

PEERS = ("onnxruntime", "litert", "torch")


def cpu_peak_gflops(threads: int) -> dict:
    """fp32 peak = threads x GHz x FLOPs/cycle (2 FMA pipes x lanes x 2); AVX2 8 lanes, AVX-512 16.

    GHz is /proc/cpuinfo's reported clock: boost clocks run above it, so a peer can exceed this "peak".
    """
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    mhz = [float(ln.split(":")[1]) for ln in info.splitlines() if ln.startswith("cpu MHz")]
    flags = next((ln for ln in info.splitlines() if ln.startswith("flags")), "")
    lanes = 16 if " avx512f" in flags else 8 if " avx2" in flags else 4
    ghz = (max(mhz) / 1e3) if mhz else 0.0
    model = next((ln.split(":")[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "")
    return {"cpu": model, "ghz": round(ghz, 2), "fp32_lanes": lanes,
            "peak_gflops": round(threads * ghz * 2 * lanes * 2, 1)}


def timed(fn, x, n):
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn(x)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def litert_fp32(model, x, work: Path, threads: int):
    """LiteRT (XNNPACK, its default CPU delegate) on the fp32 .tflite litert-torch makes of model."""
    try:
        from edgecls.export.tflite import export_tflite
        return litert_engine(export_tflite(model, x, work / "model.tflite").path, threads)
    except ImportError:
        return None


def tvm_variant(onnx_path: Path, out: Path, *, schedules=True, trials=0, db: Path | None = None,
                seed_db: Path | None = None, log=lambda m: None) -> tuple[object, dict]:
    """Compile one TVM variant (tuning first when trials > 0); returns (callable, manifest).
    seed_db: the next smaller budget's database, copied in first: tuning resumes from it, so the
    2000-trial run spends 1500 new measurements on top of the 500-trial run's (same records)."""
    t0 = time.perf_counter()
    req = CompileRequest(model=onnx_path, target="x86-host", out_dir=out, schedules=schedules,
                         tuning_db="none")  # zero-trial and naive: no database at all
    if trials and seed_db is not None and seed_db.exists() and not db.exists():
        shutil.copytree(seed_db, db)
    if trials:
        from edgecls.compile.tune import TuneRequest, tune_model
        def progress(d):
            if d.get("event") == "task":
                log(f"[{d['index'] + 1}/{d['of']}] {d['task']}: {d.get('measured', 0)} measured, best "
                    f"{(d.get('best_s') or 0) * 1e3:.3f} ms (zero-trial {(d.get('zero_trial_s') or 0) * 1e3:.3f})")
        tune_model(TuneRequest(model=onnx_path, target="x86-host", trials=trials, db_dir=db), log=log,
                   progress=progress)
        req.tuning_db = db
    art = compile_artifact(req)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["bench_prepare_s"] = round(time.perf_counter() - t0, 1)
    return tvm_adapter.load_host_library(art / "model.so"), manifest


def bench_net(name, args, work: Path) -> dict:
    torch.manual_seed(0)
    make, native = NETS[name]
    model = make().eval()
    size = native if args.size == 224 else args.size  # --size overrides every net's own size
    x = torch.randn(1, 3, size, size)
    macs, _ = count_macs_params(model, x)
    onnx_path = work / f"{name}.onnx"
    torch.onnx.export(model, (x,), str(onnx_path), dynamo=True, external_data=False, verbose=False)
    xn = x.numpy()
    sess = onnx_session(onnx_path, threads=args.threads)
    in_name = sess.get_inputs()[0].name
    engines = {"onnxruntime": lambda a: sess.run(None, {in_name: a}), "torch": lambda a: model(torch.from_numpy(a))}
    lite = litert_fp32(model, x, work, args.threads)
    if lite:
        engines["litert"] = lite
    info = {}
    variants = [("tvm_zero_trial", {})] + [(f"tvm_tuned_{t}", {"trials": t}) for t in args.trials if t]
    if args.naive:
        variants.insert(0, ("tvm_naive", {"schedules": False}))
    for key, kw in variants:
        root = args.db_root or work  # a kept --db-root makes a rerun resume (nothing left to measure)
        db = root / f"db-{name}-{kw.get('trials', 0)}" if kw.get("trials") else None
        print(f"{name}: preparing {key}", flush=True)
        smaller = [t for t in args.trials if t and t < kw.get("trials", 0)]
        seed_db = root / f"db-{name}-{max(smaller)}" if smaller and db else None
        engines[key], m = tvm_variant(onnx_path, work / f"{name}-{key}", db=db, seed_db=seed_db, **kw,
                                      log=lambda msg: print(f"  {msg}", flush=True) if args.verbose else None)
        info[key] = {"prepare_s": m["bench_prepare_s"], "schedules": m["stats"].get("schedules"),
                     "tuning": m["stats"].get("tuning"), "verify_max_abs_diff": m["verification"].get("max_abs_diff")}
    samples = {k: [] for k in engines}
    with torch.inference_mode():
        for fn in engines.values():
            fn(xn)  # warm-up
        for _ in range(args.rounds):
            for k, fn in engines.items():
                once = timed(fn, xn, 1)[0]  # slow engines get fewer runs so a round stays short
                samples[k] += [once] + timed(fn, xn, max(1, min(20, int(200 / max(once, 1e-3))) - 1))
    med = {k: statistics.median(v) for k, v in samples.items()}
    best_peer = min((k for k in PEERS if k in med), key=med.get)
    return {
        "net": name, "input": [1, 3, size, size], "macs": int(macs),
        "median_ms": {k: round(v, 3) for k, v in med.items()},
        "p90_ms": {k: round(float(np.percentile(v, 90)), 3) for k, v in samples.items()},
        "runs": {k: len(v) for k, v in samples.items()},
        "best_peer": best_peer,
        "ratio_vs_best_peer": {k: round(v / med[best_peer], 2) for k, v in med.items()},
        "gflops": {k: round(2 * macs / (v * 1e6), 1) for k, v in med.items()},
        "tvm": info,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nets", default="mobilenet_v2,resnet18", help=f"comma list of {', '.join(NETS)}, or all")
    ap.add_argument("--trials", default="500,2000", help="Comma list of tuning budgets; 0 or '' for none.")
    ap.add_argument("--naive", action="store_true", help="Also time TVM without edgecls' schedules (slow).")
    ap.add_argument("--db-root", type=Path, default=None,
                    help="Keep the tuning databases here (one per net and budget); default: a temp dir.")
    ap.add_argument("--verbose", "-v", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/host_latency.json"))
    args = ap.parse_args()
    args.trials = [int(t) for t in args.trials.split(",") if t.strip()]
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    peak = cpu_peak_gflops(args.threads)
    results = []
    with tempfile.TemporaryDirectory(prefix="edgecls-bench-") as tmp:
        for name in (list(NETS) if args.nets == "all" else args.nets.split(",")):
            r = bench_net(name, args, Path(tmp))
            results.append(r)
            print(f"\n{name} ({r['macs'] / 1e6:.0f} M MACs), best peer {r['best_peer']}; CPU fp32 peak "
                  f"{peak['peak_gflops']} GFLOPS on {args.threads} threads")
            for k, ms in sorted(r["median_ms"].items(), key=lambda kv: kv[1]):
                print(f"  {k:18s} {ms:9.2f} ms  {r['ratio_vs_best_peer'][k]:6.2f}x best peer  "
                      f"{r['gflops'][k]:6.1f} GFLOPS", flush=True)
    doc = {"benchmark": "host_latency", "machine": {**peak, "cores": os.cpu_count(),
           "python": platform.python_version(), "load_avg": os.getloadavg()},
           "threads": args.threads, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
