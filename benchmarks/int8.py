"""int8 vs fp32 on this machine: MobileNetV2-style net, QDQ int8 (ORT `quantize_static`) compiled
by TVM with and without edgecls' integer rewrite (tvm_int8), the fp32 TVM build, ORT fp32/int8.

Random weights with non-trivial BN, calibrated on random images (latency does not depend on the
values). Every engine is timed round by round in one process so machine noise hits all alike.
Not a test: run it on a quiet machine.

    .venv/bin/python benchmarks/int8.py [--size 224] [--rounds 5] [--iters 10] [--threads 2]
        [--layout NHWC] [--out benchmarks/results/int8.json]
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
from edgecls.artifact.reference import onnx_session  # noqa: E402
from edgecls.compile import tvm_adapter as ta  # noqa: E402
from edgecls.models import MobileNetV2  # noqa: E402
from edgecls.optimize.quantize import ptq_onnx  # noqa: E402
from edgecls.targets import get_target  # noqa: E402


def build(onnx_path: Path, shape, out: Path, layout: str, int8: bool) -> dict:
    tgt = get_target("x86-host")
    tt = ta.resolve_target(tgt.tvm)
    model = onnx.load(str(onnx_path))
    mod = ta.import_onnx(model, model.graph.input[0].name, shape)
    t0 = time.perf_counter()
    fused, _ = ta.run_graph_passes(mod, tt, layout if layout == "NHWC" else None, int8=int8)
    _, sched = ta.build(fused, tt, out, tgt.compiler)
    return {"compile_s": round(time.perf_counter() - t0, 1), "so_bytes": out.stat().st_size,
            "schedules": sched, "kernels": ta.kernel_stats(fused)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layout", default="NHWC")
    ap.add_argument("--out", default="benchmarks/results/int8.json")
    args = ap.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    torch.manual_seed(0)
    shape = (1, 3, args.size, args.size)
    tmp = Path(tempfile.mkdtemp(prefix="edgecls-int8-bench-"))
    net = MobileNetV2(num_classes=1000).eval()
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.weight.data, m.bias.data = torch.rand(n, generator=g) + 0.5, torch.randn(n, generator=g) * 0.1
            m.running_mean, m.running_var = torch.randn(n, generator=g) * 0.1, torch.rand(n, generator=g) + 0.5
    fp32 = tmp / "mnv2.onnx"
    torch.onnx.export(net, (torch.zeros(shape),), str(fp32), dynamo=True, external_data=False, verbose=False)
    calib = np.random.default_rng(0).standard_normal((16, *shape[1:])).astype(np.float32)
    q = ptq_onnx(fp32, tmp / "mnv2.int8.onnx", calib, "minmax")

    results: dict = {"size": args.size, "threads": args.threads, "layout": args.layout,
                     "onnx_bytes": {"fp32": fp32.stat().st_size, "int8": q.path.stat().st_size}}
    runs = {}
    for name, path, int8 in (("tvm_fp32", fp32, False), ("tvm_qdq_float", q.path, False),
                             ("tvm_int8", q.path, True)):
        so = tmp / f"{name}.so"
        results[name] = build(path, shape, so, args.layout, int8)
        runs[name] = ta.load_host_library(so)
        print(name, results[name], flush=True)
    for name, path in (("ort_fp32", fp32), ("ort_int8", q.path)):
        sess = onnx_session(path, threads=args.threads)
        iname = sess.get_inputs()[0].name
        runs[name] = (lambda s, n: lambda x: s.run(None, {n: x})[0])(sess, iname)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for fn in runs.values():
        fn(x)
    for _ in range(args.rounds):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            for _ in range(args.iters):
                fn(x)
            times[k].append((time.perf_counter() - t0) / args.iters * 1e3)
    results["median_ms"] = {k: round(statistics.median(v), 2) for k, v in times.items()}
    ref = onnx_session(q.path, optimize=False)
    exact = ref.run(None, {ref.get_inputs()[0].name: x})[0]
    results["max_abs_diff_vs_ort_noopt"] = {k: float(np.abs(runs[k](x) - exact).max())
                                            for k in ("tvm_qdq_float", "tvm_int8")}
    print(json.dumps(results["median_ms"]), json.dumps(results["max_abs_diff_vs_ort_noopt"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
