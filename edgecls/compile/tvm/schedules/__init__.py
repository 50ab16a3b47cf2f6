"""Zero-trial, rule-based CPU schedules for the PrimFuncs of a fused Relax module.

One rule per file, each a `Rule` (rule.py) whose `apply(func, target)` returns the scheduled
function's schedule and stats key, or None when it does not apply; RULES below is the one
ordered table: the first rule that applies to a kernel schedules it, a kernel no rule takes is
left as it was and counted "unscheduled".

    neon_dot.py         int8 conv2d/dense on aarch64 + dotprod: c4-packed weights, sdot by lane
    neon_dot_depthwise.py  int16 depthwise on aarch64: 8 lanes (smlal + smlal2), row windows once
    x86_vnni.py         uint8 x int8 conv2d/dense on x86 + VNNI: c4-packed weights, vpdpbusd
    widening_int8.py    int8 x int8 -> int32 conv2d/dense with a widening tensor intrinsic
    neon_fp32.py        float32 conv2d/dense on aarch64 with the by-lane FMA intrinsic
    neon_bytes.py       8-bit kernels (max pool, pad, residual add, quantize) on aarch64, 16 lanes
    batch_matmul.py     float32 matmul of two activations on x86 (attention): wider register tiles
    padded_reduction.py one reduction block whose vector axis is odd (attention q @ k^T over 197
                        tokens): padded to whole vectors, then the reduction rule
    reduction.py        one reduction block: conv2d, depthwise, dense, pooling (register tiles)
    row_reduction.py    softmax, LayerNorm: reductions + elementwise along one innermost row axis,
                        rows parallel, each block per row, reductions in `lanes` partials (rfactor)
    multi_reduction.py  other reductions: parallel over the leading spatial loops only
    injective.py        no reduction: elementwise, transpose, padding (vectorized, parallel)

Activations reach the rules as plain arithmetic: sigmoid (SiLU), GELU, Erf and softmax are
legalized with TOPI's fast_exp/fast_erf (compile/tvm/fast_math.py), so an epilogue vectorizes with
the kernel it is fused into instead of calling libm once per lane.

Helpers: tir.py (schedule queries), prepack.py (weights blocked by the register tile),
isa/ (target features, the tensor intrinsics), machine_code.py (what a built library's kernels
compiled to).
"""

from __future__ import annotations

import logging

from edgecls.compile.tvm.core import SCHEDULED_ATTR, load_tvm
from edgecls.compile.tvm.schedules.batch_matmul import BatchMatmulRule
from edgecls.compile.tvm.schedules.injective import InjectiveRule
from edgecls.compile.tvm.schedules.isa import simd_lanes
from edgecls.compile.tvm.schedules.multi_reduction import ParallelReductionsRule
from edgecls.compile.tvm.schedules.neon_bytes import NeonByteRule
from edgecls.compile.tvm.schedules.neon_dot import NeonDotRule
from edgecls.compile.tvm.schedules.neon_dot_depthwise import NeonDotDepthwiseRule
from edgecls.compile.tvm.schedules.neon_fp32 import NeonFp32Rule
from edgecls.compile.tvm.schedules.padded_reduction import PaddedReductionRule
from edgecls.compile.tvm.schedules.reduction import ReductionRule
from edgecls.compile.tvm.schedules.row_reduction import RowReductionRule
from edgecls.compile.tvm.schedules.rule import Applied, NotRecognised, Rule, RuleTarget
from edgecls.compile.tvm.schedules.widening_int8 import WideningInt8Rule, widening_disabled
from edgecls.compile.tvm.schedules.x86_vnni import X86VnniRule

__all__ = ["RULES", "SCHEDULED_ATTR", "STAT_KEYS", "Applied", "NotRecognised", "Rule", "RuleTarget",
           "apply_default_schedules", "rule_schedule", "rule_target", "simd_lanes", "widening_disabled"]

log = logging.getLogger(__name__)

# The rule table, in order: the first rule that applies to a function schedules it.
RULES: tuple[Rule, ...] = (
    NeonDotRule(),  # an int8 x int8 -> int32 conv2d/dense on an aarch64 target with dotprod
    NeonDotDepthwiseRule(),  # an int16 depthwise conv on an aarch64 target (ARMv8.0 or dotprod)
    X86VnniRule(),  # a uint8 x int8 -> int32 conv2d/dense on an x86 target with VNNI
    WideningInt8Rule(),  # an int8 x int8 -> int32 reduction, on a target with a widening intrinsic
    NeonFp32Rule(),  # a float32 reduction on aarch64: conv2d/dense with by-lane FMA
    NeonByteRule(),  # 8-bit output (max pool, pad, add, quantize) on aarch64: 16 lanes
    BatchMatmulRule(),  # a float32 matmul of two activations on x86 (attention): wider tiles
    PaddedReductionRule(),  # one einsum reduction whose vector axis is odd: padded, then as below
    ReductionRule(),  # exactly one reduction block whose output channel has a contiguous operand
    RowReductionRule(),  # softmax, LayerNorm: row-wise reductions along the innermost axis
    ParallelReductionsRule(),  # any other reduction: parallel loops only
    InjectiveRule(),  # no reduction
)
STAT_KEYS = ("conv2d", "depthwise", "dense", "generic", "unscheduled", "skipped_already_scheduled")


def rule_target(tvm_target: dict) -> RuleTarget:
    """What the rules know of a (resolved) target dict."""
    return RuleTarget(simd_lanes(tvm_target), load_tvm().target.Target(tvm_target))


def rule_schedule(func, target: RuleTarget):
    """(traced Schedule, stats key) of the first rule of RULES that applies to `func`, or
    (None, "unscheduled"). The trace is what the tuning database stores as the zero-trial
    record of a kernel."""
    for rule in RULES:
        applied = rule.apply(func, target)
        if applied is not None:
            return applied.sch, applied.kind
    return None, "unscheduled"


def _schedule_prim_func(func, target: RuleTarget):
    """(scheduled PrimFunc, stats key) or (the original, "unscheduled")."""
    tvm = load_tvm()
    sch, kind = rule_schedule(func, target)
    if sch is None:
        return func, kind
    return sch.mod["main"].with_attr(SCHEDULED_ATTR, tvm.tirx.IntImm("int32", 1)), kind


def apply_default_schedules(mod, tvm_target: dict):
    """Schedule every PrimFunc of a fused Relax IRModule (after FuseTIR, before relax.build) for
    CPU. Returns the new module and stats {"conv2d": n, "depthwise": n, "dense": n,
    "generic": n, "unscheduled": n, "skipped_already_scheduled": n}."""
    tvm = load_tvm()
    target = rule_target(tvm_target)
    stats = dict.fromkeys(STAT_KEYS, 0)
    updates = {}
    for gvar, func in mod.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        if func.attrs is not None and SCHEDULED_ATTR in func.attrs and int(func.attrs[SCHEDULED_ATTR]):
            stats["skipped_already_scheduled"] += 1
            continue
        try:
            with target.target:  # the int8 rules pick intrinsics by its features
                new, kind = _schedule_prim_func(func, target)
        except Exception as exc:  # noqa: BLE001  (never fail a build over a schedule)
            log.debug("leaving %s unscheduled: %s", gvar.name_hint, exc)
            new, kind = func, "unscheduled"
        stats[kind] += 1
        if kind != "unscheduled":
            updates[gvar] = new
    if updates:
        mod = mod.clone()  # update_func mutates in place; the caller's module stays as it was
        for gvar, new in updates.items():
            mod.update_func(gvar, new)
    return mod, stats
