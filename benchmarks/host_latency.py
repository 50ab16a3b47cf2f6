"""Batch-1 latency on this machine: edgecls' TVM artifacts vs ONNX Runtime, LiteRT and torch.

MobileNetV2- and ResNet-18-style networks, and with --nets all the issue-16 families (ViT-tiny,
MobileViT-XS at its own 256x256, EfficientNet-B0, ConvNeXt-Pico) (random weights: latency does not
depend on them), fp32, 224x224, each engine in its own process (benchmarks/timing.py: thread pools
of several runtimes in one process fight), one process at a time, round by round, so machine noise
hits all alike:
- onnxruntime (all graph optimisations), ai-edge-litert (XNNPACK, fp32 .tflite from litert-torch),
  torch eager;
- TVM naive (`--no-schedules`: TVM 0.27's plain loop nests; only with --naive, it is slow),
  TVM zero-trial (edgecls' rule-based schedules), TVM tuned at each --trials budget (MetaSchedule,
  local measurement, one tuning database per budget).
Prints medians, ratios against the best peer (the fastest of ORT / LiteRT / torch) and achieved
GFLOPS next to the CPU's fp32 peak, and writes JSON. Not a test: run it on a quiet machine.

    .venv/bin/python benchmarks/host_latency.py [--nets mobilenet_v2,resnet18] [--trials 500,2000]
        [--rounds 5] [--threads 2] [--naive] [--db-root DIR] [--work DIR [--build-only]]
        [--out benchmarks/results/host_latency.json]

--work DIR keeps the model files and builds there and reuses them: build once (under a shared
lock, with other work going on), then time the kept builds on a quiet machine.
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
from timing import Worker  # noqa: E402
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


def litert_fp32(model, x, tflite: Path) -> Path | None:
    """The fp32 .tflite litert-torch makes of model (LiteRT runs it on XNNPACK, its default CPU
    delegate); None when the optional extra is missing."""
    if tflite.exists():
        return tflite
    try:
        from edgecls.export.tflite import export_tflite
        return export_tflite(model, x, tflite).path
    except ImportError:
        return None


def tvm_variant(onnx_path: Path, out: Path, *, schedules=True, trials=0, db: Path | None = None,
                seed_db: Path | None = None, log=lambda m: None) -> tuple[Path, dict]:
    """Compile one TVM variant (tuning first when trials > 0), or reuse a kept one (--work);
    returns (model.so, manifest).
    seed_db: the next smaller budget's database, copied in first: tuning resumes from it, so the
    2000-trial run spends 1500 new measurements on top of the 500-trial run's (same records)."""
    if (out / "manifest.json").exists():
        return out / "model.so", json.loads((out / "manifest.json").read_text())
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
    (art / "manifest.json").write_text(json.dumps(manifest))
    return art / "model.so", manifest


def engine_files(name, args, work: Path) -> tuple[dict, dict, int]:
    """Model files and builds of one net: ({engine: (kind, path)}, TVM info, MACs); kept in work."""
    torch.manual_seed(0)
    make, native = NETS[name]
    model = make().eval()
    size = native if args.size == 224 else args.size  # --size overrides every net's own size
    x = torch.randn(1, 3, size, size)
    macs, _ = count_macs_params(model, x)
    onnx_path, module, xnpy = work / f"{name}.onnx", work / f"{name}.pt", work / f"{name}.input.npy"
    if not onnx_path.exists():
        torch.onnx.export(model, (x,), str(onnx_path), dynamo=True, external_data=False, verbose=False)
    torch.save(model, module)
    np.save(xnpy, x.numpy())
    files = {"onnxruntime": ("ort", onnx_path), "torch": ("torch", module)}
    lite = litert_fp32(model, x, work / f"{name}.tflite")
    if lite:
        files["litert"] = ("litert", lite)
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
        so, m = tvm_variant(onnx_path, work / f"{name}-{key}", db=db, seed_db=seed_db, **kw,
                            log=lambda msg: print(f"  {msg}", flush=True) if args.verbose else None)
        files[key] = ("tvm", so)
        info[key] = {"prepare_s": m["bench_prepare_s"], "schedules": m["stats"].get("schedules"),
                     "tuning": m["stats"].get("tuning"), "verify_max_abs_diff": m["verification"].get("max_abs_diff")}
    return files, info, int(macs)


def sample_round_robin(files: dict, xnpy: Path, args) -> dict:
    """Per engine the per-call ms over all rounds; each engine in its own kept child process,
    one child at a time; slow engines get fewer calls so a round stays short."""
    workers = {k: Worker(kind, path, args.threads, xnpy) for k, (kind, path) in files.items()}
    samples = {k: [] for k in workers}
    try:
        for _ in range(args.rounds):
            for k, w in workers.items():
                once = w.time(1)[0]
                samples[k] += [once] + w.time(max(1, min(20, int(200 / max(once, 1e-3))) - 1))
    finally:
        for w in workers.values():
            w.close()
    return samples


def bench_net(name, args, work: Path) -> dict | None:
    files, info, macs = engine_files(name, args, work)
    if args.build_only:
        return None
    samples = sample_round_robin(files, work / f"{name}.input.npy", args)
    size = NETS[name][1] if args.size == 224 else args.size  # as engine_files chose it
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
    ap.add_argument("--work", type=Path, help="Keep model files and builds here and reuse them.")
    ap.add_argument("--build-only", action="store_true", help="Make the model files and builds, time nothing.")
    ap.add_argument("--verbose", "-v", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/host_latency.json"))
    args = ap.parse_args()
    args.trials = [int(t) for t in args.trials.split(",") if t.strip()]
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    peak = cpu_peak_gflops(args.threads)
    results = []
    with tempfile.TemporaryDirectory(prefix="edgecls-bench-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name in (list(NETS) if args.nets == "all" else args.nets.split(",")):
            r = bench_net(name, args, work)
            if r is None:
                continue
            results.append(r)
            print(f"\n{name} ({r['macs'] / 1e6:.0f} M MACs), best peer {r['best_peer']}; CPU fp32 peak "
                  f"{peak['peak_gflops']} GFLOPS on {args.threads} threads")
            for k, ms in sorted(r["median_ms"].items(), key=lambda kv: kv[1]):
                print(f"  {k:18s} {ms:9.2f} ms  {r['ratio_vs_best_peer'][k]:6.2f}x best peer  "
                      f"{r['gflops'][k]:6.1f} GFLOPS", flush=True)
    doc = {"benchmark": "host_latency", "machine": {**peak, "cores": os.cpu_count(),
           "python": platform.python_version(), "load_avg": os.getloadavg()},
           "threads": args.threads, "timing": "each engine in its own process (benchmarks/timing.py), round-robin",
           "results": results}
    if args.build_only:
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
