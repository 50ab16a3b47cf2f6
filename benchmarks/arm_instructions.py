"""aarch64 instructions per inference under qemu-user: edgecls rk3399 artifacts vs LiteRT (XNNPACK),
ONNX Runtime and ncnn, on the project's reference nets. The ARM comparison that needs no board.

Nets: MobileNetV2 and ResNet-18 by default, any of edgecls.models.REFERENCE_NETS with --nets
(ViT-tiny, MobileViT-XS at 256x256, EfficientNet-B0, ConvNeXt-Pico; torch.manual_seed(0), 224x224,
the weights scripts/model_so_hashes.py's make_models gives), fp32 and int8: ONNX QDQ from ptq_onnx (minmax,
32 seeded random calibration images); LiteRT gets .tflite files from edgecls.export.tflite (what
`edgecls compile --tflite` ships), full int8 from the same calibration images; ncnn converts the
fp32 ONNX with pnnx (its own net files).

Each runtime is counted in its own qemu process, one thread, on the qemu CPU model (default
cortex-a72, the RK3399's big core): per inference = (count of 3 inferences - count of 1) / 2.
edgecls: `edgecls compile -t rk3399` then edgecls.bench.instructions.count_artifact. Peers: the
main thread of an aarch64 CPython with the pinned wheels (benchmarks/arm_peers.py). With
--dotprod-cpu (e.g. cortex-a76) the int8 rows are counted again on that CPU model, edgecls built
for --dotprod-target (jetson-orin-nano: ARMv8.2 + dotprod). Instructions are not cycles.
Not a test: 12 min on 2 shared cores, compiles included (the first run adds ~5 min: guest
Python, wheels, .tflite and ncnn files, all cached).

    .venv/bin/python benchmarks/arm_instructions.py [--nets mobilenet_v2,resnet18]
        [--runtimes edgecls,litert,onnxruntime,ncnn] [--cpu cortex-a72] [--dotprod-cpu cortex-a76]
        [--models DIR] [--out benchmarks/results/arm_instructions.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from arm_peers import count_peer, ncnn_files  # noqa: E402
from edgecls.artifact.runtime_libs import cache_dir  # noqa: E402
from edgecls.bench.instructions import count_artifact, qemu_version  # noqa: E402
from edgecls.errors import EdgeclsError  # noqa: E402

EDGECLS = Path(sys.executable).parent / "edgecls"
NETS = ("mobilenet_v2", "resnet18")  # the default; --nets takes any of edgecls.models.REFERENCE_NETS
RUNTIMES = ("edgecls", "litert", "onnxruntime", "ncnn")
RATIO_PEERS = ("litert", "onnxruntime")  # "best peer" of the ratio column
CALIBRATION_IMAGES = 32


def make_nets(out: Path, wanted=NETS) -> dict[str, Path]:
    """{net}.onnx, {net}_int8.onnx, {net}.tflite, {net}_int8.tflite of each wanted net, made once
    into `out`; a file LiteRT's converter cannot make is left out (its rows say so)."""
    import torch

    from edgecls.models import REFERENCE_NETS
    names = {n: [f"{n}{p}.{ext}" for p in ("", "_int8") for ext in ("onnx", "tflite")] for n in wanted}
    missing = [n for n in wanted if not all((out / f).is_file() for f in names[n][::2])]  # the .onnx files
    if missing:
        out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)  # every net made, in REFERENCE_NETS' order: the same weights each run
        nets = {name: (make().eval(), size) for name, (make, size) in REFERENCE_NETS.items()}
        for name in missing:
            _export_net(name, *nets[name], out)
    return {f: out / f for n in wanted for f in names[n] if (out / f).is_file()}


def _export_net(name: str, net, size: int, out: Path) -> None:
    import numpy as np
    import torch

    from edgecls.export.onnx import export_onnx
    from edgecls.export.tflite import export_tflite
    from edgecls.optimize.quantize import ptq_onnx
    x = torch.zeros(1, 3, size, size)
    calib = np.random.default_rng(0).standard_normal((CALIBRATION_IMAGES, 3, size, size)).astype("float32")
    tmp = out / f".{name}.tmp"  # each file is written whole, then renamed into place
    tmp.mkdir(exist_ok=True)
    export_onnx(net, x, tmp / f"{name}.onnx", named=False)
    ptq_onnx(tmp / f"{name}.onnx", tmp / f"{name}_int8.onnx", calib, "minmax")
    for suffix, kw in (("", {}), ("_int8", {"int8_calib": calib})):
        try:
            export_tflite(net, x, tmp / f"{name}{suffix}.tflite", **kw)
        except Exception as exc:  # noqa: BLE001  (a peer's converter failing is a skipped cell, not a stop)
            print(f"  {name}{suffix}.tflite: LiteRT's converter failed ({str(exc).splitlines()[0][:120]})")
    for f in tmp.iterdir():
        os.replace(f, out / f.name)
    tmp.rmdir()


def host_cpu() -> dict:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    field = lambda key: next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith(key)), "")
    return {"model": field("model name") or platform.processor(), "flags": field("flags").split(),
            "cores": os.cpu_count()}


def count_edgecls(onnx: Path, target: str, cpu: str, work: Path) -> dict:
    """Compile with the CLI (zero-trial schedules: an empty tuning database), count the artifact."""
    art = work / f"{onnx.stem}-{target}"
    if not (art / "manifest.json").is_file():
        env = dict(os.environ, EDGECLS_TUNING_DB=str(work / "no-tuning-db"))
        cmd = [str(EDGECLS), "compile", str(onnx), "-t", target, "-o", str(art), "--no-tflite", "--force"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
        if proc.returncode != 0:
            raise EdgeclsError(f"edgecls compile failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    result = count_artifact(art, cpu=cpu, top=5).to_dict()
    return {"per_inference": result["per_inference"], "cpu": result["cpu"], "target": target,
            "kernels": result["kernels"]}


def count_row(net: str, precision: str, files: dict, runtimes, cpu: str, target: str, work: Path) -> dict:
    """One table row: each runtime's count (or why it was skipped), and edgecls / best peer."""
    stem = net + ("_int8" if precision == "int8" else "")
    sources = {"edgecls": files[f"{stem}.onnx"], "onnxruntime": files[f"{stem}.onnx"],
               "litert": files.get(f"{stem}.tflite"), "ncnn": files.get(f"{stem}.ncnn.param")}
    row: dict = {"net": net, "precision": precision, "cpu": cpu, "counts": {}, "skipped": {}}
    for rt in runtimes:
        t0 = time.perf_counter()
        try:
            if sources[rt] is None:
                raise EdgeclsError(files.get("ncnn_skipped", f"no ncnn files for {precision}") if rt == "ncnn"
                                   else f"no {rt} model file for {stem} (its converter failed)")
            got = (count_edgecls(sources[rt], target, cpu, work) if rt == "edgecls"
                   else count_peer(rt, sources[rt], cpu))
        except EdgeclsError as exc:
            row["skipped"][rt] = str(exc).splitlines()[0]
            print(f"  {net} {precision} {rt}: skipped ({row['skipped'][rt]})", flush=True)
            continue
        got["seconds"] = round(time.perf_counter() - t0, 1)
        row["counts"][rt] = got
        print(f"  {net} {precision} {rt} ({cpu}): {got['per_inference'] / 1e6:.1f} M ({got['seconds']} s)", flush=True)
    return add_ratios(row)


def add_ratios(row: dict) -> dict:
    """edgecls / the best of LiteRT and ORT (the issue's goals), and edgecls / ncnn on its own:
    ncnn's ResNet-18 takes Winograd convolutions, fewer multiplies, not the same computation."""
    counts = {k: v["per_inference"] for k, v in row["counts"].items()}
    peers = {k: counts[k] for k in RATIO_PEERS if k in counts}
    if "edgecls" in counts and peers:
        best = min(peers, key=peers.get)
        row["best_peer"] = best
        row["edgecls_over_best_peer"] = round(counts["edgecls"] / peers[best], 3)
    if "edgecls" in counts and "ncnn" in counts:
        row["edgecls_over_ncnn"] = round(counts["edgecls"] / counts["ncnn"], 3)
    return row


def print_table(rows: list[dict], runtimes) -> None:
    head = ["net", "precision", "cpu", *runtimes, "edgecls / best of LiteRT, ORT"]
    print("\ninstructions per inference (M), qemu-user, one thread")
    print(" | ".join(head))
    for r in rows:
        cells = [f"{r['counts'][rt]['per_inference'] / 1e6:.1f}" if rt in r["counts"] else "-" for rt in runtimes]
        ratio = f"{r['edgecls_over_best_peer']:.2f}x ({r['best_peer']})" if "best_peer" in r else "-"
        print(" | ".join([r["net"], r["precision"], r["cpu"], *cells, ratio]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default=",".join(NETS))
    ap.add_argument("--runtimes", default=",".join(RUNTIMES))
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--cpu", default="cortex-a72", help="qemu CPU model of the main table")
    ap.add_argument("--target", default="rk3399", help="edgecls target of the main table")
    ap.add_argument("--dotprod-cpu", default="", help="also count the int8 rows on this qemu CPU (e.g. cortex-a76)")
    ap.add_argument("--dotprod-target", default="jetson-orin-nano")
    ap.add_argument("--models", type=Path, default=cache_dir() / "arm-peers" / "refnets",
                    help="the reference nets' files (made there if absent)")
    ap.add_argument("--work", type=Path, help="keep the compiled edgecls artifacts here (reused when present)")
    ap.add_argument("--out", default="benchmarks/results/arm_instructions.json")
    args = ap.parse_args()
    runtimes = [r for r in args.runtimes.split(",") if r]
    if unknown := set(runtimes) - set(RUNTIMES):
        sys.exit(f"unknown runtime(s) {', '.join(sorted(unknown))} (known: {', '.join(RUNTIMES)})")
    host = host_cpu()
    qemu = qemu_version("qemu-aarch64")
    print(f"host CPU: {host['model']} ({host['cores']} cores); flags: {' '.join(host['flags'])}")
    print(f"emulator: {qemu}; qemu CPU model: {args.cpu}" + (f", int8 also {args.dotprod_cpu}" if args.dotprod_cpu else ""))
    files = make_nets(args.models, args.nets.split(","))
    if "ncnn" in runtimes:
        files.update(ncnn_files(args.models, args.nets.split(",")))
    results = {"host": host, "qemu": qemu, "method": "(count of 3 inferences - count of 1) / 2, one thread; "
               "peers: main thread of an aarch64 CPython (per-thread plugin mode)",
               "versions": {"onnxruntime": "1.32.0", "ai-edge-litert": "2.3.0", "ncnn": "1.0.20261020"}, "rows": []}
    plan = [(n, p, args.cpu, args.target) for n in args.nets.split(",") for p in args.precisions.split(",")]
    if args.dotprod_cpu:
        plan += [(n, "int8", args.dotprod_cpu, args.dotprod_target) for n in args.nets.split(",")]
    with tempfile.TemporaryDirectory(prefix="edgecls-arm-insns-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for net, precision, cpu, target in plan:
            results["rows"].append(count_row(net, precision, files, runtimes, cpu, target, work))
    print_table(results["rows"], runtimes)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
