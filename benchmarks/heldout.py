"""Held-out architectures (issue #16): edgecls' x86-host artifacts vs ONNX Runtime on nets no rule
was written against (benchmarks/heldout_nets.py), geometric mean and worst ratio.

Each net: torch.manual_seed(0), stock ONNX export (edgecls.export.onnx), `edgecls compile -t
x86-host` (zero-trial schedules; compile verifies the artifact against ONNX Runtime), then
`edgecls bench --local --runtime tvm,onnxruntime --threads N` for each N asked: the artifact's
native runner and ONNX Runtime, each in its own harness process, in the same run. Compiles take
the shared CPU lock and timing the exclusive one (`--lock FILE`), so other jobs on the machine
do not overlap the timed runs. Prints the CPU, per net and thread count the ratio TVM / ORT, the
geometric mean and the worst; writes JSON. Not a test: compiles take 1-4 minutes per net on 2
shared cores (`--work DIR` keeps them; `--build-only` stops after compiling).

    .venv/bin/python benchmarks/heldout.py [--nets resnet50,densenet121] [--threads 1,2]
        [--runs 20] [--lock /tmp/quiet.lock] [--work DIR] [--build-only]
        [--out benchmarks/results/heldout_x86.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import edgecls  # noqa: E402
from families import cpu_lock  # noqa: E402
from heldout_nets import HELDOUT_NETS  # noqa: E402
from timing import cpu_facts  # noqa: E402


def build(name: str, work: Path, lock: str | None) -> Path:
    """The net's x86-host artifact (exported and compiled once per work dir)."""
    art = work / f"art-{name}"
    if (art / "manifest.json").exists():
        return art
    import torch

    from edgecls.export.onnx import export_onnx
    with cpu_lock(lock, exclusive=False):
        torch.manual_seed(0)
        onnx = work / f"{name}.onnx"
        export_onnx(HELDOUT_NETS[name]().eval(), torch.zeros(1, 3, 224, 224), onnx, named=False)
        edgecls.compile(onnx, "x86-host", art)
    return art


def time_net(art: Path, threads: int, runs: int, lock: str | None) -> dict:
    with cpu_lock(lock, exclusive=True):
        reports = edgecls.bench(art, local=True, runtime="tvm,onnxruntime", threads=threads, runs=runs, warmup=3,
                                out_dir=art.parent / f"{art.name}-reports")
    ms = {r["runtime"]: r["timings_ms"]["median"] for r in reports}
    return {"tvm_ms": ms["tvm"], "onnxruntime_ms": ms["onnxruntime"], "ratio": round(ms["tvm"] / ms["onnxruntime"], 3)}


def summary(rows: list[dict], threads: int) -> dict:
    ratios = {r["net"]: r["threads"][str(threads)]["ratio"] for r in rows}
    worst = max(ratios, key=ratios.get)
    return {"geomean": round(math.exp(sum(map(math.log, ratios.values())) / len(ratios)), 3),
            "worst": {"net": worst, "ratio": ratios[worst]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default=",".join(HELDOUT_NETS))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--lock", default=None, help="flock file: shared while compiling, exclusive while timing")
    ap.add_argument("--work", type=Path, default=None, help="keep the models and artifacts here")
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/heldout_x86.json"))
    args = ap.parse_args()
    facts = cpu_facts()
    print(f"CPU: {facts['cpu']} ({facts['cpus']} CPUs; {' '.join(facts['flags'])})", flush=True)
    counts = [int(t) for t in args.threads.split(",")]
    with tempfile.TemporaryDirectory(prefix="edgecls-heldout-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        arts = {}
        for name in args.nets.split(","):
            arts[name] = build(name, work, args.lock)
            print(f"{name}: built {arts[name]}", flush=True)
        if args.build_only:
            return
        rows = []
        for name, art in arts.items():
            row = {"net": name, "threads": {}}
            for n in counts:
                row["threads"][str(n)] = r = time_net(art, n, args.runs, args.lock)
                print(f"{name:20s} {n} thread(s): TVM {r['tvm_ms']:8.2f} ms  ORT {r['onnxruntime_ms']:8.2f} ms"
                      f"  {r['ratio']:.2f}x", flush=True)
            rows.append(row)
    totals = {str(n): summary(rows, n) for n in counts}
    for n, s in totals.items():
        print(f"{n} thread(s): geometric mean TVM/ORT {s['geomean']:.2f}x, worst {s['worst']['net']} "
              f"{s['worst']['ratio']:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "heldout", "machine": facts, "runs": args.runs, "rows": rows,
                                    "summary": totals}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
