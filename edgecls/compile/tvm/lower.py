"""Lowering the fused module: schedules (tuned records first, then the rules), weight packing,
relax.build; linking model.so with the target's compiler; running a host library or an
executable in this process."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgecls.compile.tvm.core import load_tvm, target
from edgecls.compile.tvm.schedules import apply_default_schedules
from edgecls.compile.tvm.schedules.bias_init import fold_bias_into_init
from edgecls.compile.tvm.schedules.neon_requantize import fcvtns_after_vectorize, neon_requantize
from edgecls.compile.tvm.schedules.prepack import repack_constants
from edgecls.compile.tvm.tuning.database import apply_database
from edgecls.errors import EdgeclsError, ToolchainError, last_line


def build_executable(mod, tvm_target: dict, schedules: bool = True,
                     tuning_db: Path | None = None) -> tuple[object, dict]:
    """Lower the fused module (run_graph_passes' output) into a Relax executable in memory:
    what `build` links into model.so. Returns (executable, stats).

    schedules: apply edgecls' rule-based CPU schedules (schedules.apply_default_schedules)
    first; without them every kernel is the naive single-threaded, scalar TE loop nest.
    tuning_db: a MetaSchedule database dir (tuning.tune): kernels with a record get their
    best measured schedule (marked scheduled, so the rules skip them); stats["tuning"] counts.
    """
    tvm = load_tvm()
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    tgt = target(tvm_target)
    # Fusion already ran in run_graph_passes; the rest of the CPU pipeline lowers and plans memory.
    rest = tvm.transform.Sequential(cpu.dataflow_lower_passes(tgt) + cpu.finalize_passes(tgt))
    stats: dict = {"enabled": schedules}
    if tuning_db is not None:
        mod, stats["tuning"] = apply_database(mod, tvm_target, Path(tuning_db))
    if schedules:
        mod, rule_stats = apply_default_schedules(mod, tvm_target)
        stats.update(rule_stats)
    mod, stats["packed_weights"] = repack_constants(mod)  # weights the schedules blocked
    mod, stats["bias_init"] = fold_bias_into_init(mod, tvm_target)  # dotprod: bias as the init
    mod, stats["neon_requantize"] = neon_requantize(mod, tvm_target)  # aarch64 int8 epilogues
    try:
        return relax.build(mod, tgt, relax_pipeline=rest, tir_pipeline=_tir_pipeline(tgt)), stats
    except Exception as exc:
        raise EdgeclsError(f"TVM build failed for {tvm_target}: {last_line(exc)}") from None


AARCH64_TIR_PIPELINE = "edgecls-aarch64"


def _tir_pipeline(tgt) -> str:
    """TVM's default TIR pipeline, followed on aarch64 (whose int8 epilogues are 8 and 16 lanes
    wide) by neon_requantize.fcvtns_after_vectorize; other targets build as before."""
    if not str(tgt.attrs.get("mtriple", "")).startswith("aarch64"):
        return "default"
    tvm = load_tvm()
    from tvm.s_tir.pipeline import default_s_tir_pipeline

    def pipeline():
        lower, host, device = default_s_tir_pipeline()
        return tvm.transform.Sequential([lower, fcvtns_after_vectorize()]), host, device

    tvm.tirx.compilation_pipeline.register_tir_pipeline(AARCH64_TIR_PIPELINE, pipeline)
    return AARCH64_TIR_PIPELINE


def build(mod, tvm_target: dict, out_path: Path, compiler: str, schedules: bool = True,
          tuning_db: Path | None = None) -> tuple[float, dict]:
    """build_executable, then link `out_path` with `compiler` (cross or native g++).
    Returns (seconds, stats)."""
    load_tvm()
    import tvm.support.cc as cc

    t0 = time.perf_counter()
    executable, stats = build_executable(mod, tvm_target, schedules, tuning_db)
    try:
        executable.export_library(str(out_path), fcompile=cc.cross_compiler(compiler))
    except Exception as exc:
        lines = [ln for ln in str(exc).splitlines() if "error" in ln.lower()] or str(exc).splitlines()
        raise ToolchainError(f"linking model.so with {compiler} failed: {lines[0] if lines else exc}") from None
    return time.perf_counter() - t0, stats


def _runner(module):
    """A callable running a host-arch module (a loaded model.so or an executable) in this
    process: x (batch 1) -> first output."""
    tvm = load_tvm()
    from tvm import relax
    main = relax.VirtualMachine(module, tvm.cpu())["main"]

    def run(x: np.ndarray) -> np.ndarray:
        out = main(tvm.runtime.tensor(np.ascontiguousarray(x)))
        if not hasattr(out, "numpy"):
            out = out[0]
        return out.numpy()

    return run


def load_executable(executable):
    """A callable running an executable of build_executable (host arch) without linking it."""
    return _runner(executable)


def load_host_library(lib_path: Path):
    """A callable running a host-arch model.so in this process: x (batch 1) -> first output."""
    return _runner(load_tvm().runtime.load_module(str(lib_path)))


def run_host_library(lib_path: Path, inputs: np.ndarray) -> np.ndarray:
    """Run a host-arch model.so over many inputs one by one (accuracy checks)."""
    run = load_host_library(lib_path)
    return np.stack([run(x[None])[0] for x in inputs])
