"""Where the time goes, per issue-16 family, on this machine: TVM vs ONNX Runtime, then TVM's profile.

For each net of edgecls.models.REFERENCE_NETS asked (default: the four issue-16 families: ViT-tiny,
MobileViT-XS at 256x256, EfficientNet-B0, ConvNeXt-Pico; torch.manual_seed(0), as
benchmarks/arm_instructions.py makes them): export ONNX, `edgecls compile -t x86-host` (zero-trial
schedules), then, in one hold of the exclusive CPU lock per net (`--lock FILE`, flock; compiles
take the shared one), `edgecls bench --local --runtime tvm,onnxruntime --threads N` (the native
runner and ORT in the same run) and `edgecls bench --local --profile` (time per kernel and per kind
of kernel in the instrumented Relax VM). Prints the ratio and the kinds of kernel that take the
time; writes JSON. Not a test: about 3 minutes per net on 2 shared cores.

    .venv/bin/python benchmarks/families.py [--nets vit_tiny,convnext] [--threads 1]
        [--lock /tmp/quiet.lock] [--out benchmarks/results/families_x86.json]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import edgecls  # noqa: E402

FAMILIES = ("vit_tiny", "mobilevit_xs", "efficientnet_b0", "convnext")


@contextmanager
def cpu_lock(path: str | None, exclusive: bool):
    """flock on `path` (exclusive for timing, shared for compiles), so other jobs do not overlap."""
    if not path:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def export_nets(names, out: Path) -> dict[str, Path]:
    import torch

    from edgecls.export.onnx import export_onnx
    from edgecls.models import REFERENCE_NETS
    torch.manual_seed(0)  # every net made, in REFERENCE_NETS' order: the same weights each run
    nets = {name: (make().eval(), size) for name, (make, size) in REFERENCE_NETS.items()}
    paths = {}
    for name in names:
        net, size = nets[name]
        paths[name] = out / f"{name}.onnx"
        export_onnx(net, torch.zeros(1, 3, size, size), paths[name], named=False)
    return paths


def measure(name: str, onnx: Path, args, work: Path) -> dict:
    with cpu_lock(args.lock, exclusive=False):
        art = edgecls.compile(onnx, "x86-host", work / name)
    with cpu_lock(args.lock, exclusive=True):
        timed = edgecls.bench(art, local=True, runtime="tvm,onnxruntime", threads=args.threads, runs=args.runs,
                              warmup=3, out_dir=work / f"{name}-reports")
        [prof] = edgecls.bench(art, local=True, profile=True, threads=args.threads, runs=max(3, args.runs // 2),
                               warmup=2, out_dir=work / f"{name}-reports")
    ms = {r["runtime"]: r["timings_ms"]["median"] for r in timed}
    p = prof["profile"]
    return {"net": name, "input": art.input_shape, "tvm_ms": ms["tvm"], "onnxruntime_ms": ms["onnxruntime"],
            "ratio": round(ms["tvm"] / ms["onnxruntime"], 2),
            "profile": {k: p[k] for k in ("inference_ms", "instrumented_ms", "kernels_ms")},
            "kinds": p["kinds"], "top_kernels": p["kernels"][:10]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default=",".join(FAMILIES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--lock", default=None, help="flock file: shared while compiling, exclusive while timing")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/families_x86.json"))
    args = ap.parse_args()
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("Model name")), "?")
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgecls-families-") as tmp:
        with cpu_lock(args.lock, exclusive=False):
            files = export_nets(args.nets.split(","), Path(tmp))
        for name, onnx in files.items():
            r = measure(name, onnx, args, Path(tmp))
            rows.append(r)
            kinds = ", ".join(f"{k['kind']} {k['share']:.0%}" for k in r["kinds"][:4])
            print(f"{name}: TVM {r['tvm_ms']:.2f} ms, ORT {r['onnxruntime_ms']:.2f} ms = {r['ratio']:.2f}x; "
                  f"TVM's time: {kinds}", flush=True)
    doc = {"benchmark": "families", "cpu": model, "threads": args.threads, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
