"""Latency of model variants: fp32 / pruned 0.5 / int8 (PTQ) / pruned + int8, per runtime.

MobileNetV2-style network at 224x224 (random weights: latency does not depend on them; the
accuracy side is tested on real digits data in tests/). Runtimes: ONNX Runtime, the TVM x86-host
artifact (zero-trial schedules; int8 variants with --float-kernels as tvm and --integer-kernels,
the default, as tvm_intk), and ai-edge-litert when the `tflite` extra is installed. All variants and runtimes interleaved round by round in one process; prints ratios
against fp32 ONNX Runtime and writes JSON. Not a test.

    .venv/bin/python benchmarks/optimize.py [--size 224] [--rounds 3] [--out results.json]
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
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from engines import litert_engine  # noqa: E402
from edgecls.artifact.reference import onnx_session  # noqa: E402
from edgecls.compile import tvm as tvm_adapter  # noqa: E402
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


def engines_for(name, model, onnx_path, x, calib, work: Path, threads: int):
    sess = onnx_session(onnx_path, threads=threads)
    iname = sess.get_inputs()[0].name
    engines = {"onnxruntime": lambda a: sess.run(None, {iname: a})}
    # tuning_db="none": zero-trial builds only; a user's database (records measured elsewhere, or
    # for other kernels) must not leak into this comparison.
    art = compile_artifact(CompileRequest(model=onnx_path, target="x86-host", out_dir=work / f"art-{name}",
                                          tuning_db="none", integer_kernels=False))
    engines["tvm"] = tvm_adapter.load_host_library(art / "model.so")
    if model is None:  # QDQ int8: also the integer-kernel build
        art = compile_artifact(CompileRequest(model=onnx_path, target="x86-host", out_dir=work / f"art-{name}-intk",
                                              integer_kernels=True, tuning_db="none"))
        engines["tvm_intk"] = tvm_adapter.load_host_library(art / "model.so")
    try:
        from edgecls.export.tflite import export_tflite
        if model is not None:  # LiteRT converts from the torch module (int8 from its own quantizer)
            fp = export_tflite(model, x, work / f"{name}.tflite").path
            i8 = export_tflite(model, x, work / f"{name}-int8.tflite", int8_calib=calib).path
            # Kept interpreters (edgecls' run_tflite builds one per call: fine for accuracy,
            # not for timing).
            return engines, {f"{name}": litert_engine(fp, threads), f"{name}-int8": litert_engine(i8, threads)}
    except Exception as exc:  # the optional extra is missing: say so once, measure the rest
        print(f"LiteRT skipped for {name}: {exc}")
    return engines, {}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/optimize.json"))
    args = ap.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="edgecls-bench-opt-") as tmp:
        work = Path(tmp)
        vs, x, calib = variants(work, args.size)
        xn = x.numpy()
        table = {}  # (variant, runtime) -> callable
        for name, (model, path) in vs.items():
            engines, tfl = engines_for(name, model, path, x, calib, work, args.threads)
            for runtime, fn in engines.items():
                table[(name, runtime)] = fn
            for tname, run in tfl.items():
                table[(tname, "litert")] = run
        per_round = {"onnxruntime": 10, "litert": 10, "tvm": 10, "tvm_intk": 10}
        samples = {k: [] for k in table}
        for fn in table.values():
            fn(xn)
        for _ in range(args.rounds):
            for key, fn in table.items():
                for _ in range(per_round[key[1]]):
                    t0 = time.perf_counter()
                    fn(xn)
                    samples[key].append((time.perf_counter() - t0) * 1e3)
    med = {k: statistics.median(v) for k, v in samples.items()}
    base = med[("fp32", "onnxruntime")]
    rows = []
    for (variant, runtime), ms in sorted(med.items(), key=lambda kv: (kv[0][1], kv[1])):
        rows.append({"variant": variant, "runtime": runtime, "median_ms": round(ms, 3),
                     "speedup_vs_ort_fp32": round(base / ms, 2), "runs": len(samples[(variant, runtime)])})
        print(f"{runtime:12s} {variant:16s} {ms:9.2f} ms   {base / ms:5.2f}x vs ORT fp32")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "optimize", "size": args.size, "threads": args.threads,
                                    "results": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
