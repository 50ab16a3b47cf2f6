"""int8 vs fp32 on this machine, per engine: MobileNetV2- and ResNet-18-style nets at batch 1.

Engines per net, each in its own process (benchmarks/timing.py: thread pools of several runtimes
in one process fight), timed round by round, one process at a time, so machine noise hits all
alike:
  tvm_fp32        TVM, edgecls' zero-trial rule schedules
  tvm_int8        TVM integer kernels (compile/tvm/quant) with the widening multiply-accumulate
                  intrinsics (compile/tvm/schedules/widening_int8.py), zero-trial
  tvm_int8_plain  the same integer kernels on the plain rule: built for the exactness check only
  ort_fp32 / ort_int8        ONNX Runtime; int8 = the QDQ file TVM compiles (quantize_static U8S8,
                             reduce_range: 7-bit weights, ptq_onnx's default)
  *_full          the same on the stock quantize_static file (U8S8 per channel, full-range int8
                  weights): tvm_int8_full, ort_int8_full, and tvm_qdq_float_full, that QDQ file
                  built in float (--no-int8's path: the integer build must not be slower)
  litert_fp32 / litert_int8  LiteRT (XNNPACK), converted from the torch module; int8 = full int8
                             from litert-torch's PT2E quantizer (edgecls.export.tflite)

  tvm_int8_tuned  with --trials N: `edgecls tune --integer-kernels` (MetaSchedule, N trials) into
                  a fresh database, then the same build with its records. The zero-trial widening
                  schedule is each kernel's baseline record; MetaSchedule's own candidates cannot
                  use the intrinsic (not in its search space), so a tuned kernel only replaces it
                  where a plain schedule measured faster.

Random weights with non-trivial BN, calibrated on random images: latency does not depend on the
values. Prints ratios against LiteRT int8 (the issue's goal: TVM int8 <= 0.8x) and ORT fp32.
Not a test: run it on a quiet machine (it reports the load average it saw).

    .venv/bin/python benchmarks/int8.py [--size 224] [--rounds 5] [--iters 10] [--threads 2]
        [--nets mobilenet_v2,resnet18] [--trials 0] [--out benchmarks/results/int8.json] [--work DIR]
        [--build-only]

--work DIR keeps every model file and build there and reuses them: build once (--build-only,
under a shared lock, with other work going on), then time the kept builds on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import Worker  # noqa: E402
from edgecls.artifact.reference import onnx_session  # noqa: E402
from edgecls.compile import tvm as ta  # noqa: E402
from edgecls.compile.tune import TuneRequest, tune_model  # noqa: E402
from edgecls.export.tflite import export_tflite  # noqa: E402
from edgecls.models import MobileNetV2, ResNet18  # noqa: E402
from edgecls.optimize.quantize import ptq_onnx  # noqa: E402
from edgecls.quiet import quiet_torch_export  # noqa: E402
from edgecls.targets import get_target  # noqa: E402

NETS = {"mobilenet_v2": MobileNetV2, "resnet18": ResNet18}
CALIBRATION_IMAGES = 16


def randomized(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.weight.data, m.bias.data = torch.rand(n, generator=g) + 0.5, torch.randn(n, generator=g) * 0.1
            m.running_mean, m.running_var = torch.randn(n, generator=g) * 0.1, torch.rand(n, generator=g) + 0.5
    return net.eval()


def tvm_engine(onnx_path: Path, shape, out: Path, int8: bool, widening: bool = True, tuning_db=None):
    """(info, ("tvm", model.so)) of an x86-host build through the pipeline's passes (NHWC, rule
    schedules, a tuning database's records first when given); a build kept from an earlier run
    (--work) is used as it is."""
    tgt = get_target("x86-host")
    tt = ta.resolve_target(tgt.tvm)
    kept = out.with_suffix(".json")
    if out.exists() and kept.exists():
        return json.loads(kept.read_text()), ("tvm", out)
    model = onnx.load(str(onnx_path))
    t0 = time.perf_counter()
    fused, _ = ta.run_graph_passes(ta.import_onnx(model, model.graph.input[0].name, shape), tt, "NHWC", int8=int8)
    if widening:
        _, sched = ta.build(fused, tt, out, tgt.compiler, tuning_db=tuning_db)
    else:
        with ta.widening_disabled():
            _, sched = ta.build(fused, tt, out, tgt.compiler)
    info = {"compile_s": round(time.perf_counter() - t0, 1), "so_bytes": out.stat().st_size, "schedules": sched}
    if int8:
        with ta.load_tvm().target.Target(tt):
            isa = "x86_vnni" if ta.has_vnni() else "avx2"
        info["widened_kernels"] = {isa: len(ta.widened_kernels(out, isa))}
    kept.write_text(json.dumps(info))
    return info, ("tvm", out)


def engines_for(name: str, work: Path, size: int, seed: int, trials: int = 0):
    """Builds and model files of one net: ({engine: (kind, path)}, info, QDQ files, input shape)."""
    torch.manual_seed(seed)
    net = randomized(NETS[name](num_classes=1000), seed + 1)
    shape = (1, 3, size, size)
    example = torch.zeros(shape)
    fp32 = work / f"{name}.onnx"
    if not fp32.exists():
        with quiet_torch_export():
            torch.onnx.export(net, (example,), str(fp32), dynamo=True, external_data=False, verbose=False)
    calib = np.random.default_rng(seed).standard_normal((CALIBRATION_IMAGES, *shape[1:])).astype(np.float32)
    qdq, full = work / f"{name}.int8.onnx", work / f"{name}.int8_full.onnx"
    for path, reduce_range in ((qdq, True), (full, False)):
        if not path.exists():
            ptq_onnx(fp32, path, calib, "minmax", reduce_range=reduce_range)
    info: dict = {"onnx_bytes": {"fp32": fp32.stat().st_size, "int8": qdq.stat().st_size}}
    runs = {}
    for engine, path, int8, widening in (("tvm_fp32", fp32, False, True), ("tvm_int8", qdq, True, True),
                                         ("tvm_int8_plain", qdq, True, False), ("tvm_int8_full", full, True, True),
                                         ("tvm_qdq_float_full", full, False, True)):
        info[engine], runs[engine] = tvm_engine(path, shape, work / f"{name}.{engine}.so", int8, widening)
        print(name, engine, info[engine], flush=True)
    if trials:
        db = work / f"db-{name}"
        t0 = time.perf_counter()
        tuned = tune_model(TuneRequest(model=qdq, target="x86-host", trials=trials, db_dir=db, integer_kernels=True,
                                       input_shape=shape))
        info["tvm_int8_tuned"], runs["tvm_int8_tuned"] = tvm_engine(qdq, shape, work / f"{name}.tuned.so", True,
                                                                   tuning_db=db)
        info["tvm_int8_tuned"].update(tune_s=round(time.perf_counter() - t0, 1), measured=tuned["measured"],
                                      kernels_tuned_faster=sum(1 for t in tuned["tasks"] if t["best_ms"] and
                                                               t["zero_trial_ms"] and t["best_ms"] < t["zero_trial_ms"]))
        print(name, "tvm_int8_tuned", info["tvm_int8_tuned"], flush=True)
    runs["ort_fp32"], runs["ort_int8"], runs["ort_int8_full"] = ("ort", fp32), ("ort", qdq), ("ort", full)
    try:
        t0 = time.perf_counter()
        fp_tfl, i8_tfl = work / f"{name}.tflite", work / f"{name}.int8.tflite"
        if not fp_tfl.exists():
            export_tflite(net, example, fp_tfl)
        if not i8_tfl.exists():
            export_tflite(net, example, i8_tfl, int8_calib=calib)
        info["litert_convert_s"] = round(time.perf_counter() - t0, 1)
        runs["litert_fp32"], runs["litert_int8"] = ("litert", fp_tfl), ("litert", i8_tfl)
    except Exception as exc:  # the optional extra is missing: say so, measure the rest
        info["litert_skipped"] = str(exc).splitlines()[0]
        print(f"LiteRT skipped for {name}: {info['litert_skipped']}", flush=True)
    return runs, info, {"": qdq, "_full": full}, shape


def check_exactness(info: dict, workers: dict, plain: Worker, qdqs: dict, x: np.ndarray, tmp: Path) -> None:
    """Widened == plain integer kernels bit for bit (the plain build is not timed); each int8
    build vs ORT's exact (unoptimised) QDQ reference. Outputs come back from the timing children."""
    int8 = workers["tvm_int8"].output(tmp / "tvm_int8.npy")
    info["tvm_int8_equals_plain"] = bool(np.array_equal(int8, plain.output(tmp / "plain.npy")))
    for suffix, qdq in qdqs.items():
        ref = onnx_session(qdq, optimize=False)
        exact = ref.run(None, {ref.get_inputs()[0].name: x})[0]
        got = workers[f"tvm_int8{suffix}"].output(tmp / f"tvm_int8{suffix}.npy")
        info[f"tvm_int8{suffix}_max_abs_diff_vs_ort_noopt"] = float(np.abs(got - exact).max())


def cpu_model() -> str:
    """The CPU's model name and its int8-relevant flags (/proc/cpuinfo), for the JSON."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown"
    model = next((x.partition(":")[2].strip() for x in lines if x.startswith("model name")), "unknown")
    flags = set(next((x.partition(":")[2] for x in lines if x.startswith("flags")), "").split())
    wanted = ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni")
    return f"{model} ({' '.join(f for f in wanted if f in flags)})"


def start_workers(specs: dict, inputs: dict, threads: int) -> dict:
    """One kept child process per (net, engine), loaded and warm, none of them running."""
    workers = {}
    for (name, engine), (kind, path) in specs.items():
        workers[(name, engine)] = Worker(kind, path, threads, inputs[name])
    return workers


def round_robin(workers: dict, rounds: int, iters: int) -> dict:
    """Per (net, engine) the mean ms of `iters` calls, one value a round; round after round,
    each engine in its own process, one child at a time."""
    times: dict = {k: [] for k in workers}
    for _ in range(rounds):
        for key, worker in workers.items():
            times[key].append(statistics.fmean(worker.time(iters)))
    return times


def latency_rows(name: str, times: dict, args) -> dict:
    med = {e: statistics.median(v) for (n, e), v in times.items() if n == name}
    lite, ort = med.get("litert_int8"), med["ort_fp32"]
    rows = {}
    print(f"\n{name} {args.size}x{args.size}, batch 1, {args.threads} threads (median of {args.rounds} rounds, "
          "each engine in its own process)")
    print(f"{'engine':18s} {'ms':>8s} {'vs LiteRT int8':>15s} {'speedup vs ORT fp32':>20s}")
    for engine, ms in sorted(med.items(), key=lambda kv: kv[1]):
        vs_lite = round(ms / lite, 2) if lite else None
        rows[engine] = {"median_ms": round(ms, 2), "min_ms": round(min(times[(name, engine)]), 2),
                        "x_litert_int8": vs_lite, "speedup_vs_ort_fp32": round(ort / ms, 2)}
        print(f"{engine:18s} {ms:8.2f} {vs_lite if vs_lite else '-':>15} {ort / ms:20.2f}")
    return rows


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nets", default="mobilenet_v2,resnet18")
    ap.add_argument("--trials", type=int, default=0, help="Also tune the int8 kernels (MetaSchedule) with N trials.")
    ap.add_argument("--out", default="benchmarks/results/int8.json")
    ap.add_argument("--work", help="Keep model files and builds here and reuse them (default: a fresh temp dir).")
    ap.add_argument("--build-only", action="store_true", help="Make the model files and builds, time nothing.")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="edgecls-int8-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    nets = args.nets.split(",")
    results: dict = {"size": args.size, "threads": args.threads, "batch": 1, "layout": "NHWC",
                     "timing": "each engine in its own process (benchmarks/timing.py), round-robin",
                     "cpu": ta.load_tvm().target.codegen.llvm_get_system_cpu(), "cpu_model": cpu_model(),
                     "vnni": ta.has_vnni(ta.load_tvm().target.Target(ta.resolve_target(get_target("x86-host").tvm))),
                     "nets": {}}
    specs, inputs, checks = {}, {}, {}
    for i, name in enumerate(nets):
        runs, info, qdqs, shape = engines_for(name, work, args.size, seed=10 * i, trials=args.trials)
        results["nets"][name] = info
        inputs[name] = work / f"{name}.input.npy"
        np.save(inputs[name], np.random.default_rng(1).standard_normal(shape).astype(np.float32))
        checks[name] = (runs.pop("tvm_int8_plain"), qdqs)
        specs.update({(name, engine): spec for engine, spec in runs.items()})
    if args.build_only:
        return
    workers = start_workers(specs, inputs, args.threads)
    try:
        for name, ((kind, path), qdqs) in checks.items():
            plain = Worker(kind, path, args.threads, inputs[name])
            mine = {e: w for (n, e), w in workers.items() if n == name}
            check_exactness(results["nets"][name], mine, plain, qdqs, np.load(inputs[name]), work)
            plain.close()
        load_before = os.getloadavg()
        times = round_robin(workers, args.rounds, args.iters)
    finally:
        for w in workers.values():
            w.close()
    results["load_average"] = {"before_timing": [round(v, 2) for v in load_before],
                               "after_timing": [round(v, 2) for v in os.getloadavg()]}
    for name in nets:
        results["nets"][name]["latency"] = latency_rows(name, times, args)
    print("load average (1/5/15 min):", results["load_average"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
