"""The one door to TVM: edgecls imports `tvm` only inside this package, and everything outside
it (compile/build.py and tune.py, the pipeline, tests, benchmarks) uses the names below.

    core.py        load_tvm, versions, resolve_target, target (the leaf: imports nothing of
                   edgecls.compile)
    frontend.py    ONNX / torch.export -> Relax
    quant/         QDQ int8 -> integer compute (Relax rewrites)
    passes.py      graph passes (quant first where asked), kernel statistics
    schedules/     rule-based TIR schedules, one rule per file, one ordered rule table
    tuning/        MetaSchedule: database, tuning loop, measuring here / on boards over RPC
    lower.py       schedules + tuned records + weight packing -> executable / model.so

TVM itself is imported lazily (load_tvm), so importing this package costs no TVM start-up.
"""

from edgecls.compile.tvm.core import load_tvm, resolve_target, target, versions
from edgecls.compile.tvm.frontend import import_exported_program, import_onnx
from edgecls.compile.tvm.lower import (
    build,
    build_executable,
    load_executable,
    load_host_library,
    run_host_library,
)
from edgecls.compile.tvm.passes import PassRecord, count_ops, kernel_stats, run_graph_passes
from edgecls.compile.tvm.quant import int8_summary, quantize_int8
from edgecls.compile.tvm.schedules import apply_default_schedules, simd_lanes, widening_disabled
from edgecls.compile.tvm.schedules.isa import has_vnni, widening_isa
from edgecls.compile.tvm.schedules.machine_code import kernel_mnemonics, widened_kernels
from edgecls.compile.tvm.schedules.neon_requantize import neon_requantize
from edgecls.compile.tvm.schedules.prepack import pack_array, repack_constants
from edgecls.compile.tvm.tuning import RpcSpec, TaskResult, TuneResult, apply_database, target_key, tune

__all__ = [
    "PassRecord", "RpcSpec", "TaskResult", "TuneResult", "apply_database", "apply_default_schedules", "build",
    "build_executable", "count_ops", "has_vnni", "import_exported_program", "import_onnx", "int8_summary", "kernel_mnemonics",
    "kernel_stats", "load_executable", "load_host_library", "load_tvm", "neon_requantize", "pack_array", "quantize_int8",
    "repack_constants", "resolve_target", "run_graph_passes", "run_host_library", "simd_lanes", "target",
    "target_key", "tune", "versions", "widened_kernels", "widening_disabled", "widening_isa",
]
