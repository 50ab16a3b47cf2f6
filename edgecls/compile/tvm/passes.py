"""Graph passes on the imported Relax module: integer rewrite, BN folding, layout, legalization
and fusion, each timed and recorded; and what the fused module holds (ops, kernels)."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

from edgecls.compile.tvm.core import load_tvm, target
from edgecls.compile.tvm.fast_math import FAST_MATH_LEGALIZE
from edgecls.compile.tvm.quant import quantize_int8
from edgecls.compile.tvm.schedules.isa import eight_bit_kernels
from edgecls.errors import ModelError, last_line


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
    tvm = load_tvm()
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


def _plan(tvm_target: dict, layout: str | None, fold_bn: bool, int8: bool) -> list[tuple[str, object]]:
    """The passes run_graph_passes runs, in order: [(name, pass)]."""
    from tvm import relax
    plan = []
    if int8:  # QDQ conv/matmul -> integer compute (quant), before FoldConstant floats the weights
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
             ("LegalizeOps", relax.transform.LegalizeOps(FAST_MATH_LEGALIZE)),
             ("AnnotateTIROpPattern", relax.transform.AnnotateTIROpPattern()),
             ("FoldConstant", relax.transform.FoldConstant()),
             # tvm.compile(mod, target) alone does no fusion on CPU: FuseOps/FuseTIR are explicit.
             ("FuseOps", relax.transform.FuseOps()),
             ("FuseTIR", relax.transform.FuseTIR()),
             # Which kernel params are weights (constants): the schedules pack those (prepack).
             ("AttachAttrLayoutFreeBuffers", relax.transform.AttachAttrLayoutFreeBuffers())]
    return plan


def run_graph_passes(mod, tvm_target: dict, layout: str | None, fold_bn: bool = True,
                     log=None, int8: bool = False) -> tuple[object, list[PassRecord]]:
    """BN folding, layout conversion, legalization and fusion; each pass timed and recorded.

    layout: None keeps the imported layout (NCHW from ONNX/torch), "NHWC" converts convs to
    NHWC/HWIO (HWIO: the weight is contiguous along the output channel, which the schedules
    vectorize). int8: QDQ conv2d/matmul become integer compute first (quant.quantize_int8).
    Passes run under the target so legalization picks target-aware strategies.
    """
    load_tvm()
    records: list[PassRecord] = []
    plan = _plan(tvm_target, layout, fold_bn, int8)
    with target(tvm_target):
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
