"""Latency of model variants: fp32 / pruned 0.5 / int8 (PTQ) / pruned + int8, per runtime.

MobileNetV2-style network at 224x224 (random weights: latency does not depend on them; the
accuracy side is tested on real digits data in tests/). Runtimes: ONNX Runtime, the TVM x86-host
artifact (zero-trial schedules; int8 variants with --float-kernels as tvm and --integer-kernels,
the default, as tvm_intk), and ai-edge-litert when the `tflite` extra is installed. Each
(variant, runtime) is timed in a kept child process of its own (benchmarks/timing.py: thread pools
of several runtimes in one process fight), one child at a time, round after round; prints the CPU,
ratios against fp32 ONNX Runtime and writes JSON. Not a test.

    .venv/bin/python benchmarks/optimize.py [--size 224] [--rounds 3] [--threads 2] [--out results.json]
        [--work DIR [--build-only]]   # keep the builds: compile once, time later on a quiet machine
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import Worker, cpu_facts  # noqa: E402
from edgecls.models import MobileNetV2  # noqa: E402
from edgecls.optimize.prune import prune_model  # noqa: E402
from edgecls.optimize.quantize import ptq_onnx  # noqa: E402
from edgecls.pipeline import CompileRequest, compile_artifact  # noqa: E402
from edgecls.quiet import quiet_torch_export  # noqa: E402


def export(model, x, path):
    with quiet_torch_export():
        torch.onnx.export(model.eval(), (x,), str(path), dynamo=True, external_data=False, verbose=False)
    return path


def variants(work: Path, size: int):
    torch.manual_seed(0)
    model = MobileNetV2(num_classes=1000).eval()
    x = torch.randn(1, 3, size, size)
    calib = np.random.default_rng(0).standard_normal((32, 3, size, size)).astype(np.float32)
    pruned = prune_model(model, x, 0.5).model
    out = {"fp32": (model, export(model, x, work / "fp32.onnx")),
           "pruned50": (pruned, export(pruned, x, work / "pruned.onnx"))}
    out["int8"] = (None, ptq_onnx(out["fp32"][1], work / "int8.onnx", calib).path)
    out["pruned50-int8"] = (None, ptq_onnx(out["pruned50"][1], work / "pruned-int8.onnx", calib).path)
    return out, x, calib


def build(req: CompileRequest) -> Path:
    """An artifact, compiled unless --work already holds it."""
    return req.out_dir if (req.out_dir / "manifest.json").exists() else compile_artifact(req)


def engine_files(name, model, onnx_path, x, calib, work: Path) -> dict:
    """{(variant, runtime): (timing kind, model file)} for one variant."""
    files = {(name, "onnxruntime"): ("ort", onnx_path)}
    # tuning_db="none": zero-trial builds only; a user's database (records measured elsewhere, or
    # for other kernels) must not leak into this comparison.
    art = build(CompileRequest(model=onnx_path, target="x86-host", out_dir=work / f"art-{name}",
                               tuning_db="none", integer_kernels=False))
    files[(name, "tvm")] = ("tvm", art / "model.so")
    if model is None:  # QDQ int8: also the integer-kernel build
        art = build(CompileRequest(model=onnx_path, target="x86-host", out_dir=work / f"art-{name}-intk",
                                   integer_kernels=True, tuning_db="none"))
        files[(name, "tvm_intk")] = ("tvm", art / "model.so")
    try:
        from edgecls.export.tflite import export_tflite
        if model is not None:  # LiteRT converts from the torch module (int8 from its own quantizer)
            fp, i8 = work / f"{name}.tflite", work / f"{name}-int8.tflite"
            if not fp.exists():
                export_tflite(model, x, fp)
            if not i8.exists():
                export_tflite(model, x, i8, int8_calib=calib)
            files[(name, "litert")], files[(f"{name}-int8", "litert")] = ("litert", fp), ("litert", i8)
    except Exception as exc:  # the optional extra is missing: say so once, measure the rest
        print(f"LiteRT skipped for {name}: {exc}")
    return files


def sample_round_robin(files: dict, xnpy: Path, threads: int, rounds: int, per_round: int = 10) -> dict:
    """Per (variant, runtime) the per-call ms over all rounds, each in its own kept child."""
    workers = {k: Worker(kind, path, threads, xnpy) for k, (kind, path) in files.items()}
    samples = {k: [] for k in workers}
    try:
        for _ in range(rounds):
            for k, w in workers.items():
                samples[k] += w.time(per_round)
    finally:
        for w in workers.values():
            w.close()
    return samples


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/optimize.json"))
    ap.add_argument("--work", type=Path, help="keep the models and builds here (reused when present)")
    ap.add_argument("--build-only", action="store_true", help="only build into --work")
    args = ap.parse_args()
    facts = cpu_facts()
    print(f"CPU: {facts['cpu']} ({facts['cpus']} CPUs; {' '.join(facts['flags'])}); {args.threads} threads")
    with tempfile.TemporaryDirectory(prefix="edgecls-bench-opt-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        vs, x, calib = variants(work, args.size)
        np.save(work / "x.npy", x.numpy())
        files = {}
        for name, (model, path) in vs.items():
            files.update(engine_files(name, model, path, x, calib, work))
        if args.build_only:
            print(f"built into {work}")
            return
        samples = sample_round_robin(files, work / "x.npy", args.threads, args.rounds)
    med = {k: statistics.median(v) for k, v in samples.items()}
    base = med[("fp32", "onnxruntime")]
    rows = []
    for (variant, runtime), ms in sorted(med.items(), key=lambda kv: (kv[0][1], kv[1])):
        rows.append({"variant": variant, "runtime": runtime, "median_ms": round(ms, 3),
                     "speedup_vs_ort_fp32": round(base / ms, 2), "runs": len(samples[(variant, runtime)])})
        print(f"{runtime:12s} {variant:16s} {ms:9.2f} ms   {base / ms:5.2f}x vs ORT fp32")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "optimize", "machine": facts, "size": args.size,
                                    "threads": args.threads, "results": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
