"""Compile stage: Model + Target -> model.so, with the graph passes recorded.

Policy lives here (which layout, which import route, what to record); the mechanism is in
edgecls.compile.tvm, the one door to TVM.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from edgecls.compile import tvm as tvm_adapter
from edgecls.errors import UsageError
from edgecls.load import Model
from edgecls.targets import Target

LAYOUT_CHOICES = ("auto", "NCHW", "NHWC")


@dataclass
class CompiledModel:
    library: Path
    tvm_target: dict
    layout: dict  # requested, chosen, reason
    import_route: str
    passes: list[dict] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)


def choose_layout(requested: str, target: Target) -> dict:
    if requested not in LAYOUT_CHOICES:
        raise UsageError(f"--layout must be one of {', '.join(LAYOUT_CHOICES)}, got '{requested}'")
    if requested != "auto":
        return {"requested": requested, "chosen": requested, "reason": "given on the command line"}
    return {"requested": "auto", "chosen": target.layout,
            "reason": f"preferred layout of target {target.name} ({Path(target.source).name})"}


def _import(model: Model, log) -> tuple[object, str]:
    if model.exported_program is not None:
        log("import: torch.export program -> Relax")
        return tvm_adapter.import_exported_program(model.exported_program), "torch.export"
    log("import: ONNX (onnxsim-simplified) -> Relax")
    mod = tvm_adapter.import_onnx(model.onnx, model.input.name, model.input.shape, model.input.dtype)
    return mod, "onnx"


@dataclass
class FusedGraph:
    """Imported and fused Relax module, what both compile and tune start from (the tuning
    database is keyed by these exact kernels: same passes, same layout)."""
    mod: object
    tvm_target: dict
    layout: dict
    import_route: str
    ops_before: dict
    records: list
    timings: dict


def _has_qdq(model: Model) -> bool:
    return any(n.op_type == "DequantizeLinear" for n in model.onnx.graph.node)


def integer_kernels_for(target: Target, requested: bool | None) -> bool:
    """--integer-kernels / --float-kernels, or by default (None) integer kernels on CPU (LLVM)
    targets, where the widening int8 schedules have exact int8 kernels faster than fp32; float
    elsewhere."""
    return requested if requested is not None else target.tvm.get("kind") == "llvm"


def fuse_model(model: Model, target: Target, layout: str = "auto", log=lambda msg: None,
               integer_kernels: bool | None = None) -> FusedGraph:
    tvm_target = tvm_adapter.resolve_target(target.tvm)
    integer_kernels = integer_kernels_for(target, integer_kernels)
    chosen = choose_layout(layout, target)
    log(f"target {target.name}: {tvm_target}; layout {chosen['chosen']} ({chosen['reason']})")
    t0 = time.perf_counter()
    mod, route = _import(model, log)
    ops_before = tvm_adapter.count_ops(mod)
    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    fused, records = tvm_adapter.run_graph_passes(
        mod, tvm_target, layout=chosen["chosen"] if chosen["chosen"] == "NHWC" else None, log=log,
        int8=integer_kernels and _has_qdq(model))
    return FusedGraph(fused, tvm_target, chosen, route, ops_before, records,
                      {"import_s": round(t_import, 3), "passes_s": round(time.perf_counter() - t0, 3)})


def compile_model(model: Model, target: Target, out_library: Path, layout: str = "auto",
                  log=lambda msg: None, schedules: bool = True, tuning_db: Path | None = None,
                  integer_kernels: bool | None = None) -> CompiledModel:
    compiler = target.require_compiler()  # fail before minutes of work, naming the Debian package
    graph = fuse_model(model, target, layout, log, integer_kernels)
    fused, records, ops_before = graph.mod, graph.records, graph.ops_before
    kernels = tvm_adapter.kernel_stats(fused)
    bn_record = next((r for r in records if r.name == "FoldBatchnormToConv2D"), None)
    stats = {
        "ops_before": dict(sorted(ops_before.items())),
        "convs": ops_before.get("relax.nn.conv2d", 0),
        "batch_norm_in_graph": ops_before.get("relax.nn.batch_norm", 0),
        "batch_norm_left": bn_record.detail["batch_norm_left"] if bn_record else None,
        **kernels,
    }
    log(f"stats: {stats['convs']} convs, {stats['fused_conv_kernels']}/{stats['conv_kernels']} conv "
        f"kernels with fused epilogue, {stats['unfused_epilogues']} unfused epilogues, "
        f"BN {stats['batch_norm_in_graph']} in graph / {stats['batch_norm_left']} left")

    log(f"build: lowering and linking with {compiler}")
    build_s, sched = tvm_adapter.build(fused, graph.tvm_target, out_library, target.compiler,
                                       schedules=schedules, tuning_db=tuning_db)
    tuning = sched.pop("tuning", None)
    stats["schedules"] = sched
    if tuning is not None:
        stats["tuning"] = {"db": str(tuning_db), **tuning}
        log(f"tuning database {tuning_db}: {tuning['hit']}/{tuning['tasks']} kernels tuned")
    if schedules:
        log(f"schedules: {', '.join(f'{k} {v}' for k, v in sched.items() if k != 'enabled')}")
    return CompiledModel(
        library=out_library, tvm_target=graph.tvm_target, layout=graph.layout, import_route=graph.import_route,
        passes=[{"name": r.name, "seconds": r.seconds, **({"detail": r.detail} if r.detail else {})}
                for r in records],
        stats=stats,
        timings={**graph.timings, "build_s": round(build_s, 3)},
    )
