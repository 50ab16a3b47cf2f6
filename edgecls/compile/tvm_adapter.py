"""The entry to TVM: edgecls imports tvm only here and in its sibling `tvm_*` modules.

The siblings (tvm_schedules: rule-based CPU schedules; tvm_tuning: MetaSchedule) are part of this
adapter layer and are called only through it or by compile/build.py.

TVM's Python APIs have churned every release (Relay, tvmc and AutoTVM are gone since 0.20), so
every call lives here behind small functions with plain-Python arguments and results. Several
calls in 0.27 fail silently; each workaround below says which trap it avoids.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from edgecls.errors import EdgeclsError, ModelError, ToolchainError, first_line, last_line

# TVM is imported lazily: `edgecls targets` and `inspect` should not pay ~2 s of TVM start-up.
_tvm = None


def _import_tvm():
    global _tvm
    if _tvm is None:
        import tvm
        import tvm.relax  # noqa: F401  (registers the relax namespace)
        _tvm = tvm
    return _tvm


def versions() -> dict:
    out = {}
    for pkg in ("apache-tvm", "apache-tvm-ffi"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    tvm = _import_tvm()
    out["llvm"] = int(tvm.target.codegen.llvm_version_major())
    return out


def resolve_target(tvm_target: dict) -> dict:
    """Make a target dict concrete for this workstation.

    {"mcpu": "native"} silently compiles for a generic x86-64 in TVM 0.27 (no AVX2/AVX-512), so
    the host CPU name is resolved through LLVM; num-cores 0 means this machine's usable cores.
    """
    tvm = _import_tvm()
    resolved = dict(tvm_target)
    if resolved.get("mcpu") == "native":
        resolved["mcpu"] = str(tvm.target.codegen.llvm_get_system_cpu())
    if resolved.get("num-cores", None) in (0, None):
        resolved["num-cores"] = len(os.sched_getaffinity(0))
    try:
        tvm.target.Target(resolved)
    except Exception as exc:
        raise EdgeclsError(f"TVM rejects target {resolved}: {first_line(exc)}") from None
    return resolved


def _target(tvm_target: dict):
    return _import_tvm().target.Target(tvm_target)


# --------------------------------------------------------------------------- import


def _clip_as_relax_ops(onnx_frontend, relax):
    """An ONNX Clip converter that emits relax maximum/minimum ops.

    TVM's own converter lowers Clip (ReLU6) to pre-built TIR kernels via emit_te; ConvertLayout
    cannot see through those, so NHWC graphs get a transpose pair around every ReLU6 and the
    conv is no longer fused with its activation. Binary relax ops have layout inference.
    """
    tvm = _import_tvm()

    def bound(expr, default):
        if expr is None:
            return default
        if isinstance(expr, tvm.ir.Constant):
            return float(np.asarray(expr.value.numpy()).reshape(-1)[0])
        return None  # a computed bound: fall back to TVM's converter

    class Clip(onnx_frontend.OnnxOpConverter):
        @classmethod
        def _impl_v13(cls, bb, inputs, attr, params):
            lo, hi = bound(inputs[1], -np.inf), bound(inputs[2], np.inf)
            if lo is None or hi is None:
                return onnx_frontend.Clip._impl_v13(bb, inputs, attr, params)
            x, dtype = inputs[0], inputs[0].ty.dtype
            if lo != -np.inf:
                x = bb.emit(relax.op.maximum(x, relax.const(lo, dtype)))
            if hi != np.inf:
                x = bb.emit(relax.op.minimum(x, relax.const(hi, dtype)))
            return x

        _impl_v11 = _impl_v13

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            return onnx_frontend.Clip._impl_v1(bb, inputs, attr, params)

    return Clip


def import_onnx(onnx_model, input_name: str, shape: tuple[int, ...], dtype: str = "float32"):
    """ONNX -> Relax IRModule with weights embedded as constants (so FoldConstant sees them)."""
    tvm = _import_tvm()
    from tvm import relax
    from tvm.relax.frontend.onnx import onnx_frontend

    original = onnx_frontend._get_convert_map
    clip = _clip_as_relax_ops(onnx_frontend, relax)

    def patched_map():
        table = dict(original())
        table["Clip"] = clip
        return table

    onnx_frontend._get_convert_map = patched_map
    try:
        return onnx_frontend.from_onnx(onnx_model, shape_dict={input_name: list(shape)},
                                       dtype_dict={input_name: dtype}, keep_params_in_input=False)
    except tvm.error.OpNotImplemented as exc:
        ops = str(exc).split("frontend ONNX:")[-1].strip().splitlines()[0]
        raise ModelError(f"unsupported operator(s) for TVM's ONNX importer: {ops}") from None
    except NotImplementedError as exc:
        raise ModelError(f"unsupported by TVM's ONNX importer: {exc}") from None
    except Exception as exc:
        raise ModelError(f"TVM could not import the ONNX model: {last_line(exc)}") from None
    finally:
        onnx_frontend._get_convert_map = original


def import_exported_program(exported_program):
    """torch.export program -> Relax IRModule (this route keeps clip as a relax op)."""
    from tvm.relax.frontend.torch import from_exported_program
    try:
        return from_exported_program(exported_program, keep_params_as_input=False)
    except Exception as exc:
        raise ModelError(f"TVM could not import the torch.export program: {last_line(exc)}") from None


# --------------------------------------------------------------------------- graph passes


@dataclass
class PassRecord:
    name: str
    seconds: float
    detail: dict = field(default_factory=dict)


def _main_bindings(mod):
    """Every (var, value) binding of the Relax `main` function, in order."""
    func = mod["main"]
    for block in func.body.blocks:
        for binding in block.bindings:
            yield binding.var, binding.value


def _op_name(call) -> str | None:
    op = getattr(call, "op", None)
    return getattr(op, "name", None)


def count_ops(mod) -> dict[str, int]:
    """Relax operator histogram of `main` (before legalization): e.g. {"relax.nn.conv2d": 52}."""
    counts: dict[str, int] = {}
    for _, value in _main_bindings(mod):
        name = _op_name(value)
        if name:
            counts[name] = counts.get(name, 0) + 1
    return counts


_EPILOGUE_OPS = ("add", "relu", "maximum", "minimum", "clip", "multiply", "subtract", "divide")


def kernel_stats(mod) -> dict:
    """After FuseTIR: how many kernels, how many convs carry their epilogue, what stayed apart.

    A kernel is "conv" when its name has conv2d; its epilogue is fused when the name lists more
    ops. `unfused_epilogues` counts elementwise-only kernels that consume a conv kernel's output:
    each is a ReLU/add the fuser failed to merge (should be 0).
    """
    tvm = _import_tvm()
    producer: dict = {}
    kernels, conv, fused_conv, unfused, dense = 0, 0, 0, 0, 0
    for var, value in _main_bindings(mod):
        if _op_name(value) != "relax.call_tir":
            continue
        kernels += 1
        callee = value.args[0].name_hint
        base = callee.replace("fused_", "")
        parts = [p.rstrip("0123456789") for p in base.split("_") if p]
        parts = [p for p in parts if p not in ("", "tir", "nn")]
        producer[var] = callee
        if "conv2d" in parts:
            conv += 1
            if len(parts) > 1:
                fused_conv += 1
        elif "matmul" in parts or "dense" in parts:
            dense += 1
        elif parts and all(p in _EPILOGUE_OPS for p in parts):
            args = value.args[1]
            fields = getattr(args, "fields", [args])
            if any("conv2d" in producer.get(a, "") for a in fields if isinstance(a, tvm.relax.Var)):
                unfused += 1
    return {"kernels": kernels, "conv_kernels": conv, "fused_conv_kernels": fused_conv,
            "dense_kernels": dense, "unfused_epilogues": unfused}


def run_graph_passes(mod, tvm_target: dict, layout: str | None, fold_bn: bool = True,
                     log=None, int8: bool = False) -> tuple[object, list[PassRecord]]:
    """BN folding, layout conversion, legalization and fusion; each pass timed and recorded.

    layout: None keeps the imported layout (NCHW from ONNX/torch), "NHWC" converts convs to
    NHWC/HWIO (HWIO: the weight is contiguous along the output channel, which tvm_schedules
    vectorizes). Passes run under the target so legalization picks target-aware strategies.
    """
    _import_tvm()
    from tvm import relax
    target = _target(tvm_target)
    records: list[PassRecord] = []
    plan = []
    if int8:  # QDQ conv/matmul -> integer compute (tvm_int8), before FoldConstant floats the weights
        from edgecls.compile.tvm_int8 import quantize_int8
        from edgecls.compile.tvm_int8_schedules import eight_bit_kernels
        # Where the target has 8-bit kernels (AVX2 byte pairs, ARM sdot), they keep an 8-bit input.
        plan.append(("QuantizeInt8", functools.partial(quantize_int8, eight_bit=eight_bit_kernels(tvm_target))))
    if fold_bn:
        # The default pipeline leaves BatchNormalization from non-torch exporters as separate
        # arithmetic; fold it into conv weights first (DecomposeOpsForInference does not).
        plan += [("FoldBatchnormToConv2D", relax.transform.FoldBatchnormToConv2D()),
                 ("FoldConstant", relax.transform.FoldConstant())]
    plan += [("DecomposeOpsForInference", relax.transform.DecomposeOpsForInference()),
             ("FoldConstant", relax.transform.FoldConstant())]
    if layout == "NHWC":
        plan.append(("ConvertLayout", relax.transform.ConvertLayout(
            {"relax.nn.conv2d": ["NHWC", "HWIO"]})))
    plan += [("DispatchSampling", relax.backend.DispatchSampling()),
             ("DispatchSortScan", relax.backend.DispatchSortScan()),
             ("LegalizeOps", relax.transform.LegalizeOps()),
             ("AnnotateTIROpPattern", relax.transform.AnnotateTIROpPattern()),
             ("FoldConstant", relax.transform.FoldConstant()),
             # tvm.compile(mod, target) alone does no fusion on CPU: FuseOps/FuseTIR are explicit.
             ("FuseOps", relax.transform.FuseOps()),
             ("FuseTIR", relax.transform.FuseTIR()),
             # Which kernel params are weights (constants): tvm_schedules packs those (tvm_prepack).
             ("AttachAttrLayoutFreeBuffers", relax.transform.AttachAttrLayoutFreeBuffers())]
    with target:
        for name, p in plan:
            before = count_ops(mod).get("relax.nn.batch_norm", 0) if name == "FoldBatchnormToConv2D" else None
            t0 = time.perf_counter()
            try:
                mod = p(mod)
            except Exception as exc:
                raise ModelError(f"TVM pass {name} failed: {last_line(exc)}") from None
            rec = PassRecord(name, round(time.perf_counter() - t0, 4))
            if before is not None:
                left = count_ops(mod).get("relax.nn.batch_norm", 0)
                rec.detail = {"batch_norm_before": before, "batch_norm_left": left}
            records.append(rec)
            if log:
                log(f"pass {name}: {rec.seconds:.3f}s {rec.detail or ''}".rstrip())
    return mod, records


# --------------------------------------------------------------------------- build


def build(mod, tvm_target: dict, out_path: Path, compiler: str, schedules: bool = True,
          tuning_db: Path | None = None) -> tuple[float, dict]:
    """Lower the fused module and link `out_path` with `compiler` (cross or native g++).

    schedules: apply edgecls' rule-based CPU schedules (tvm_schedules) first; without them every
    kernel is the naive single-threaded, scalar TE loop nest.
    tuning_db: a MetaSchedule database dir (tvm_tuning.tune): kernels with a record get their
    best measured schedule (marked scheduled, so the rules skip them); stats["tuning"] counts.
    """
    tvm = _import_tvm()
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu
    import tvm.support.cc as cc

    target = _target(tvm_target)
    # Fusion already ran in run_graph_passes; the rest of the CPU pipeline lowers and plans memory.
    rest = tvm.transform.Sequential(cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target))
    t0 = time.perf_counter()
    stats: dict = {"enabled": schedules}
    if tuning_db is not None:
        from edgecls.compile.tvm_tuning import apply_database
        mod, stats["tuning"] = apply_database(mod, tvm_target, Path(tuning_db))
    if schedules:
        from edgecls.compile.tvm_schedules import apply_default_schedules  # imports this module
        mod, rule_stats = apply_default_schedules(mod, tvm_target)
        stats.update(rule_stats)
    from edgecls.compile.tvm_prepack import repack_constants  # weights the schedules blocked
    mod, stats["packed_weights"] = repack_constants(mod)
    try:
        executable = relax.build(mod, target, relax_pipeline=rest)
    except Exception as exc:
        raise EdgeclsError(f"TVM build failed for {tvm_target}: {last_line(exc)}") from None
    try:
        executable.export_library(str(out_path), fcompile=cc.cross_compiler(compiler))
    except Exception as exc:
        lines = [ln for ln in str(exc).splitlines() if "error" in ln.lower()] or str(exc).splitlines()
        raise ToolchainError(f"linking model.so with {compiler} failed: {lines[0] if lines else exc}") from None
    return time.perf_counter() - t0, stats


def load_host_library(lib_path: Path):
    """A callable running a host-arch model.so in this process: x (batch 1) -> first output."""
    tvm = _import_tvm()
    from tvm import relax
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib_path)), tvm.cpu())
    main = vm["main"]

    def run(x: np.ndarray) -> np.ndarray:
        out = main(tvm.runtime.tensor(np.ascontiguousarray(x)))
        if not hasattr(out, "numpy"):
            out = out[0]
        return out.numpy()

    return run


def run_host_library(lib_path: Path, inputs: np.ndarray) -> np.ndarray:
    """Run a host-arch model.so over many inputs one by one (accuracy checks)."""
    run = load_host_library(lib_path)
    return np.stack([run(x[None])[0] for x in inputs])
