"""Latency on a busy board: quiet vs one busy process, edgecls' TVM runner vs ONNX Runtime (issue #17).

ResNet-18- and MobileNetV2-style nets (fp32, 224x224, random weights: latency does not depend on
them) compiled for x86-host; each runtime measured in its own process through the artifact's own
harness (edgecls-runner, harness/bench_py.py), --threads 2, quiet and then beside a fresh busy
process (edgecls' `bench --background-load`, bench/load.py), round after round, interleaved so
machine noise hits all alike. Four engines:
- tvm: the runner's default, its own parallel launcher (runner/parallel.cc), each loop on the
  threads the cores left free allow (runner/free_cores.cc);
- tvm-fixed: the same launcher on all --threads threads (EDGECLS_RUNNER_FOLLOW_FREE=0);
- tvm-pool: the same runner on TVM's thread pool (EDGECLS_RUNNER_LAUNCHER=tvm; unpinned);
- onnxruntime: its own thread pool.
Prints the CPU (model, flags), per engine and condition the median of the round medians and the
worst round median, and the ratios the issue sets as goals, judged on the worst round:
TVM/ORT under load (<= 1) and TVM busy/quiet (<= 2). Not a test: run it on an otherwise quiet
machine (flock /tmp/quiet.lock when other jobs share it).

    .venv/bin/python benchmarks/busy_board.py [--nets resnet18,mobilenet_v2] [--rounds 4] [--runs 40]
        [--threads 2] [--load 1] [--session same|own] [--work DIR] [--build-only]
        [--out benchmarks/results/busy_board.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from edgecls.bench.load import background_load  # noqa: E402
from edgecls.bench.places import LocalPlace  # noqa: E402
from timing import cpu_facts  # noqa: E402

ENGINES = ("tvm", "tvm-fixed", "tvm-pool", "onnxruntime")


def build(net: str, work: Path) -> Path:
    """The x86-host artifact of one reference net (compiled once per work dir)."""
    art = work / f"art-{net}"
    if (art / "manifest.json").exists():
        return art
    import torch

    from edgecls.models import MobileNetV2, ResNet18
    from edgecls.pipeline import CompileRequest, compile_artifact
    torch.manual_seed(0)
    model = {"resnet18": ResNet18, "mobilenet_v2": MobileNetV2}[net](num_classes=1000).eval()
    onnx_path = work / f"{net}.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), str(onnx_path), dynamo=True, external_data=False,
                      verbose=False)
    compile_artifact(CompileRequest(model=onnx_path, target="x86-host", out_dir=art, tuning_db="none"))
    return art


def measure(art: Path, engine: str, threads: int, runs: int) -> float:
    """One harness process; returns its median ms."""
    flags = ["--input", "reference/input.npy", "--threads", str(threads), "--warmup", "5", "--runs", str(runs)]
    env = dict(os.environ)
    if engine == "onnxruntime":
        argv = [sys.executable, "harness/bench_py.py", "--runtime", "onnxruntime", "--model", "model.onnx", *flags]
    else:
        argv = ["./edgecls-runner", "--model", "model.so", *flags]
        env["EDGECLS_RUNNER_LAUNCHER"] = "tvm" if engine == "tvm-pool" else "edgecls"
        env["EDGECLS_RUNNER_FOLLOW_FREE"] = "0" if engine == "tvm-fixed" else "1"
    proc = subprocess.run(argv, cwd=art, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"{engine} failed on {art.name}: {proc.stderr.strip()[-300:]}")
    return json.loads(proc.stdout)["timings_ms"]["median"]


def summarize(medians: dict) -> dict:
    """{engine: {cond: [round medians]}} -> medians, worst rounds and the goal ratios."""
    out = {e: {c: {"median_ms": round(statistics.median(v), 2), "worst_ms": round(max(v), 2),
                   "rounds_ms": [round(x, 2) for x in v]} for c, v in conds.items()} for e, conds in medians.items()}
    for e in out:
        out[e]["busy_over_quiet_worst"] = round(out[e]["busy"]["worst_ms"] / out[e]["quiet"]["median_ms"], 2)
    ort = out["onnxruntime"]["busy"]["worst_ms"]
    for e in ENGINES[:-1]:
        out[e]["over_ort_busy_worst"] = round(out[e]["busy"]["worst_ms"] / ort, 2)
    return out


@contextmanager
def busy(n: int, session: str):
    """n busy processes: edgecls' own background load (a child of this benchmark, so in its
    scheduler autogroup: what `bench --background-load` does here), or, with session "own",
    shell loops in sessions of their own, like a daemon (on Linux with autogroups the CPU is then
    shared between the groups, not between the threads)."""
    if session == "same" or not n:
        with background_load(LocalPlace(), n, bound_s=600):
            yield
        return
    procs = [subprocess.Popen(["setsid", "sh", "-c", "while :; do :; done"]) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def bench_net(net: str, args, work: Path) -> dict:
    art = build(net, work)
    medians = {e: {"quiet": [], "busy": []} for e in ENGINES}
    for r in range(args.rounds):
        for cond in ("quiet", "busy"):
            for engine in ENGINES:  # a fresh busy process for each measurement
                with busy(args.load if cond == "busy" else 0, args.session):
                    ms = measure(art, engine, args.threads, args.runs)
                medians[engine][cond].append(ms)
                print(f"  {net} round {r + 1} {cond:5s} {engine:12s} {ms:8.2f} ms", flush=True)
    return summarize(medians)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="resnet18,mobilenet_v2")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--load", type=int, default=1, help="busy processes beside the benchmark")
    ap.add_argument("--session", choices=("same", "own"), default="same",
                    help="busy processes in this benchmark's session (as bench --background-load) or their own")
    ap.add_argument("--work", type=Path, default=None, help="keep the compiled artifacts here")
    ap.add_argument("--build-only", action="store_true", help="compile the artifacts into --work and stop")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "busy_board.json")
    args = ap.parse_args()
    facts = cpu_facts()
    print(f"CPU: {facts['cpu']} ({facts['cpus']} CPUs; {' '.join(facts['flags'])}); {args.threads} threads, "
          f"{args.load} busy process(es) ({args.session} session), {args.rounds} rounds x {args.runs} runs")
    work = args.work or Path(tempfile.mkdtemp(prefix="busy-board-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.build_only:
        print("\n".join(str(build(net, work)) for net in args.nets.split(",")))
        return
    results = {net: bench_net(net, args, work) for net in args.nets.split(",")}
    print(f"\n{'net':14s} {'engine':12s} {'quiet med':>10s} {'busy med':>9s} {'busy worst':>10s} "
          f"{'worst/quiet':>11s} {'worst/ORT':>9s}")
    for net, res in results.items():
        for e in ENGINES:
            r = res[e]
            print(f"{net:14s} {e:12s} {r['quiet']['median_ms']:10.2f} {r['busy']['median_ms']:9.2f} "
                  f"{r['busy']['worst_ms']:10.2f} {r['busy_over_quiet_worst']:11.2f} "
                  f"{r.get('over_ort_busy_worst', 1.0):9.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": facts, "threads": args.threads, "load": args.load,
                                    "session": args.session,
                                    "rounds": args.rounds, "runs": args.runs, "nets": results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
