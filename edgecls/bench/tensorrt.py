"""`--runtime tensorrt`: the artifact's model.onnx on a Jetson GPU, measured by harness/bench_trt.py.

The harness runs on the board with the board's python (standard library only) and drives
TensorRT's trtexec; it prints the same JSON fields as edgecls-runner plus "tensorrt" (version,
precision, engine cache, GPU compute vs end-to-end) and "jetson" (nvpmodel, clocks, tegrastats).
"""

from __future__ import annotations

import sys

from edgecls.artifact.harness.contract import PRECISIONS
from edgecls.errors import ArtifactError, UsageError

TRT_HARNESS = "harness/bench_trt.py"


def check_precision(precision: str | None, runtimes) -> str | None:
    if precision is None:
        return None
    if precision not in PRECISIONS:
        raise UsageError(f"--precision takes one of {', '.join(PRECISIONS)}; got '{precision}'")
    if "tensorrt" not in runtimes:
        raise UsageError("--precision applies to --runtime tensorrt only")
    return precision


def tensorrt_argv(manifest: dict, place, opts, flags: list[str]) -> list[str]:
    files = manifest.get("files", {})
    if TRT_HARNESS not in files:
        raise ArtifactError("artifact has no TensorRT harness (compiled by an older edgecls: compile it again)")
    if "model.onnx" not in files:
        raise ArtifactError("artifact has no model.onnx for runtime tensorrt")
    python = getattr(getattr(place, "board", None), "python", None) or sys.executable
    argv = [python, TRT_HARNESS, "--model", "model.onnx",
            "--precision", (opts.extra or {}).get("precision") or "auto"]
    name = (manifest.get("model", {}).get("input") or {}).get("name")
    if name:
        argv += ["--input-name", name]
    return argv + flags
