"""Each runtime timed in its own process, so no other runtime's thread pool competes with it.

Why: thread pools of several runtimes in one process fight. Measured on the Zen 3 EPYC: ORT
ResNet-18 on 2 threads took 16.9 ms interleaved with TVM, LiteRT and torch in one process and
9.0-9.5 ms alone; on the Zen 4 EPYC ORT int8 MobileNetV2 took 8.53 ms on 2 threads in one process
vs 3.90 ms on 1 thread. So every engine lives in a child process of its own (`Worker`): the child
loads the engine once and waits on its stdin; the parent asks one child at a time for n timed
calls and keeps the round-robin order between them, so machine noise still hits all engines
alike. Between its turns a child is stopped (SIGSTOP): an idle pool's spinning threads would
otherwise take the CPUs from the child being timed (measured, Zen 4, 2 threads, kept children
left running: ORT fp32 MobileNetV2 18.1 ms, LiteRT int8 5.47, against 4.98 and 2.96 in one
process), so only one child can run at a time. A short pause after each stop lets it land.

One-shot use, for a single engine (JSON list of per-call ms on stdout):

    python benchmarks/timing.py time --kind tvm|ort|litert|torch --path P --threads N
        --input x.npy [--runs 20] [--warmup 3] [--save-output out.npy]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
KINDS = ("tvm", "ort", "litert", "torch")
SETTLE_S = 0.02  # after a SIGSTOP, before the next child's turn


def load_engine(kind: str, path: Path, threads: int):
    """A callable x -> first output (numpy) for one model file, on `threads` threads."""
    sys.path.insert(0, str(HERE.parent))
    sys.path.insert(0, str(HERE))
    if kind == "tvm":
        os.environ["TVM_NUM_THREADS"] = str(threads)  # read when TVM's pool starts
        from edgecls.compile.tvm import load_host_library
        return load_host_library(path)
    if kind == "ort":
        from engines import ort_engine
        return ort_engine(path, threads)
    if kind == "litert":
        from engines import litert_engine
        return litert_engine(path, threads)
    if kind == "torch":
        import torch
        torch.set_num_threads(threads)
        model = torch.load(path, weights_only=False).eval()  # a whole module saved by the parent

        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(x)).numpy()
        return run
    raise ValueError(f"unknown engine kind {kind!r}; one of {', '.join(KINDS)}")


FLAGS_SHOWN = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
               "amx_tile", "asimd", "asimddp", "i8mm")


def cpu_facts() -> dict:
    """What every benchmark prints and records: the CPU model, how many CPUs this process may
    use, and the flags that decide which kernels run (/proc/cpuinfo)."""
    import platform
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    field = lambda key: next((x.partition(":")[2].strip() for x in lines if x.startswith(key)), "")  # noqa: E731
    flags = set((field("flags") or field("Features")).split())
    return {"cpu": field("model name") or platform.processor() or "unknown", "cpus": len(os.sched_getaffinity(0)),
            "flags": [f for f in FLAGS_SHOWN if f in flags]}


def timed_calls(fn, x: np.ndarray, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(x)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def die_with_parent() -> None:
    """A served child is stopped most of the time: if the parent dies (killed, not closing it),
    the kernel kills the child (PR_SET_PDEATHSIG) instead of leaving it stopped forever."""
    import ctypes
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass  # not Linux: close() still ends the child on every normal exit


def serve(fn, x: np.ndarray) -> None:
    """The child's loop: one JSON request a line on stdin, one JSON reply a line on stdout.
    {"runs": n} -> {"ms": [...]}; {"output": path} -> np.save of one call's output, {"saved": path}."""
    for line in sys.stdin:
        req = json.loads(line)
        if "runs" in req:
            reply = {"ms": timed_calls(fn, x, int(req["runs"]))}
        else:
            np.save(req["output"], np.asarray(fn(x)))
            reply = {"saved": req["output"]}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


class Worker:
    """One engine in its own child process, loaded once, warmed up, then timed on request."""

    def __init__(self, kind: str, path: Path, threads: int, input_npy: Path, warmup: int = 3):
        argv = [sys.executable, str(Path(__file__).resolve()), "serve", "--kind", kind, "--path", str(path),
                "--threads", str(threads), "--input", str(input_npy), "--warmup", str(warmup)]
        env = {**os.environ, "TVM_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
        self.name = f"{kind}:{Path(path).name}"
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self._reply()  # the child says it is loaded and warm
        self._stop()

    def _stop(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)
        time.sleep(SETTLE_S)

    def _reply(self) -> dict:
        for line in self.proc.stdout:  # skips anything a runtime prints that is not a reply
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"timing child {self.name} exited (code {self.proc.wait()}); see its stderr above")

    def _ask(self, req: dict) -> dict:
        """One request in the child's turn: woken (SIGCONT), asked, stopped again."""
        os.kill(self.proc.pid, signal.SIGCONT)
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        reply = self._reply()
        self._stop()
        return reply

    def time(self, runs: int) -> list[float]:
        """Per-call milliseconds of `runs` calls, every other child stopped."""
        return self._ask({"runs": runs})["ms"]

    def output(self, path: Path) -> np.ndarray:
        self._ask({"output": str(path)})
        return np.load(path)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("time", "serve"))
    ap.add_argument("--kind", choices=KINDS, required=True)
    ap.add_argument("--path", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--input", type=Path, required=True, help="The input tensor, a .npy file.")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--save-output", type=Path, help="time: also np.save one call's output here.")
    args = ap.parse_args()
    x = np.load(args.input)
    fn = load_engine(args.kind, args.path, args.threads)
    timed_calls(fn, x, args.warmup)
    if args.mode == "serve":
        die_with_parent()
        sys.stdout.write(json.dumps({"ready": True}) + "\n")
        sys.stdout.flush()
        serve(fn, x)
        return
    if args.save_output:
        np.save(args.save_output, np.asarray(fn(x)))
    print(json.dumps(timed_calls(fn, x, args.runs)))


if __name__ == "__main__":
    main()
