"""Compile time and batch-1 latency of x86-host artifacts vs ONNX Runtime vs torch eager.

MobileNetV2- and ResNet-18-style networks (random weights; latency does not depend on them),
engines interleaved round by round in one process so machine noise hits all of them alike.
Prints ratios against ONNX Runtime and writes JSON. Not a test: run it on a quiet machine.

    .venv/bin/python benchmarks/compile_host.py [--size 224] [--rounds 5] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edgecls.artifact.reference import onnx_session  # noqa: E402
from edgecls.compile import tvm_adapter  # noqa: E402
from edgecls.models import MobileNetV2, ResNet18  # noqa: E402
from edgecls.pipeline import CompileRequest, compile_artifact  # noqa: E402

NETS = {"mobilenet_v2": lambda: MobileNetV2(num_classes=1000), "resnet18": lambda: ResNet18(num_classes=1000)}


def timed(fn, x, n):
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn(x)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def bench_net(name, size, rounds, threads, work: Path) -> dict:
    torch.manual_seed(0)
    model = NETS[name]().eval()
    x = torch.randn(1, 3, size, size)
    onnx_path = work / f"{name}.onnx"
    torch.onnx.export(model, (x,), str(onnx_path), dynamo=True, external_data=False, verbose=False)
    t0 = time.perf_counter()
    art = compile_artifact(CompileRequest(model=onnx_path, target="x86-host", out_dir=work / f"{name}-host"))
    compile_s = time.perf_counter() - t0
    manifest = json.loads((art / "manifest.json").read_text())

    xn = x.numpy()
    sess = onnx_session(art / "model.onnx", threads=threads)
    in_name = sess.get_inputs()[0].name
    tvm_run = tvm_adapter.load_host_library(art / "model.so")
    engines = {
        "onnxruntime": lambda a: sess.run(None, {in_name: a}),
        "torch": lambda a: model(torch.from_numpy(a)),
        "tvm_untuned": tvm_run,
    }
    # Slow engines get fewer runs per round so the whole benchmark stays in minutes.
    per_round = {"onnxruntime": 20, "torch": 10, "tvm_untuned": 2}
    samples = {k: [] for k in engines}
    with torch.inference_mode():
        for fn in engines.values():
            fn(xn)  # warm-up
        for _ in range(rounds):
            for k, fn in engines.items():
                samples[k] += timed(fn, xn, per_round[k])
    med = {k: statistics.median(v) for k, v in samples.items()}
    return {
        "net": name, "input": [1, 3, size, size], "compile_s": round(compile_s, 2),
        "build_timings": manifest["timings"], "tvm_target": manifest["target"]["tvm_resolved"],
        "median_ms": {k: round(v, 3) for k, v in med.items()},
        "p90_ms": {k: round(float(np.percentile(v, 90)), 3) for k, v in samples.items()},
        "runs": {k: len(v) for k, v in samples.items()},
        "ratio_vs_onnxruntime": {k: round(v / med["onnxruntime"], 2) for k, v in med.items()},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nets", default="mobilenet_v2,resnet18")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/compile_host.json"))
    args = ap.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory(prefix="edgecls-bench-") as tmp:
        for name in args.nets.split(","):
            r = bench_net(name, args.size, args.rounds, args.threads, Path(tmp))
            results.append(r)
            m, q = r["median_ms"], r["ratio_vs_onnxruntime"]
            print(f"{name:13s} compile {r['compile_s']:6.1f} s | median ms: ORT {m['onnxruntime']:8.2f}  "
                  f"torch {m['torch']:8.2f} ({q['torch']:.2f}x)  TVM untuned {m['tvm_untuned']:8.2f} "
                  f"({q['tvm_untuned']:.1f}x ORT)", flush=True)
    doc = {"benchmark": "compile_host", "machine": {"cpu": platform.processor() or platform.machine(),
           "cores": os.cpu_count(), "python": platform.python_version()},
           "threads": args.threads, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
