"""The Jetson board around TensorRT, for bench_trt.py (standalone, stdlib only).

Its SoC and L4T release, and the board tools sampled while trtexec runs: tegrastats, nvpmodel -q,
jetson_clocks --show (each skipped when absent). Shipped in the artifact's harness/ next to
bench_trt.py; the parsers of their output are in trt_parse.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_py import device_facts as py_device_facts  # noqa: E402  (sibling files in harness/)
from trt_parse import (  # noqa: E402
    parse_jetson_clocks, parse_nvpmodel, parse_tegra_release, summarize_tegrastats)


def read(path: str):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace").replace("\x00", "").strip()
    except OSError:
        return None


def run_tool(argv, timeout=20) -> tuple[int, str]:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        return p.returncode, (p.stdout or "") + (p.stderr or "")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)


def soc_name() -> str | None:
    model = read("/proc/device-tree/model")
    if model:
        return model
    if shutil.which("nvidia-smi"):
        rc, text = run_tool(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"])
        if rc == 0 and text.strip():
            return text.strip().splitlines()[0]
    return None


def device_facts():
    """bench_py's board facts plus the Jetson SoC and L4T release."""
    return {**py_device_facts(), "soc": soc_name(), "l4t": parse_tegra_release(read("/etc/nv_tegra_release"))}


class Tegrastats:
    """tegrastats --interval N for the duration of a `with` block (skipped when absent)."""

    def __init__(self, interval_ms: int = 100):
        self.interval_ms, self.lines, self.proc, self.thread = interval_ms, [], None, None
        self.path = shutil.which("tegrastats")

    def __enter__(self):
        if self.path:
            try:
                self.proc = subprocess.Popen([self.path, "--interval", str(self.interval_ms)],
                                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            except OSError:
                self.proc = None
            if self.proc:
                self.thread = threading.Thread(target=self._read, daemon=True)
                self.thread.start()
        return self

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def __exit__(self, *exc):
        if self.proc:
            # A run shorter than one interval still gets one reading (tegrastats prints its first
            # line after one interval): wait up to three intervals for it before stopping.
            deadline = time.monotonic() + 3 * self.interval_ms / 1000.0 + 1.0
            while not self.lines and self.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.thread.join(5)

    def summary(self) -> dict | None:
        return summarize_tegrastats(self.lines, self.interval_ms) if self.path else None


def jetson_tools() -> dict:
    """nvpmodel -q and jetson_clocks --show when installed (jetson_clocks needs root: sudo -n is tried)."""
    out = {"nvpmodel": None, "clocks": None, "tools_missing": []}
    if shutil.which("nvpmodel"):
        rc, text = run_tool(["nvpmodel", "-q"])
        out["nvpmodel"] = parse_nvpmodel(text) if rc == 0 else {"error": (text.strip().splitlines() or ["?"])[-1]}
    else:
        out["tools_missing"].append("nvpmodel")
    if shutil.which("jetson_clocks"):
        rc, text = run_tool(["jetson_clocks", "--show"])
        if rc != 0 and shutil.which("sudo"):
            rc, text = run_tool(["sudo", "-n", "jetson_clocks", "--show"])
        out["clocks"] = parse_jetson_clocks(text) if rc == 0 else {"error": (text.strip().splitlines() or ["?"])[-1]}
    else:
        out["tools_missing"].append("jetson_clocks")
    if not shutil.which("tegrastats"):
        out["tools_missing"].append("tegrastats")
    return out
