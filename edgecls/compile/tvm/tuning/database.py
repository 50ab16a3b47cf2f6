"""The per-target MetaSchedule database of tuned kernels, and replaying it into a module.

`tuner.tune` appends records to `db_dir/<target-key>/`; `apply_database` swaps every kernel with
a record for its best schedule (marked `tirx.is_scheduled`, so the rule schedules leave it alone).

Both work on the module run_graph_passes returns (legalized and fused, what lower.build gets):
its PrimFuncs are exactly the kernels that get built, so the database keys (the structural hash
of each normalized PrimFunc) match between tuning and building, and identical layers of
different models share records. Trap: ms.relax_integration.compile_relax re-runs
LegalizeOps/FuseOps itself, and on an already-fused module its MetaScheduleApplyDatabase
silently finds nothing; edgecls therefore never calls it and queries the database per PrimFunc.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from edgecls.compile.tvm.core import load_tvm
from edgecls.compile.tvm.passes import count_ops, run_graph_passes
from edgecls.compile.tvm.schedules import SCHEDULED_ATTR
from edgecls.compile.tvm.schedules.isa import register_intrinsics

FAILED_RUN_S = 1e9  # MetaSchedule stores failed candidates with a huge run time


def target_key(tvm_target: dict) -> str:
    """A stable directory name per resolved target: readable prefix + hash of the whole dict."""
    digest = hashlib.sha256(json.dumps(tvm_target, sort_keys=True, default=str).encode()).hexdigest()
    cpu = str(tvm_target.get("mcpu") or tvm_target.get("mtriple") or "generic")
    return f"{tvm_target.get('kind', 'llvm')}-{cpu}-{digest[:12]}".replace("/", "_")


def meta_schedule():
    """tvm.s_tir.meta_schedule, its logger quietened."""
    load_tvm()
    from tvm.s_tir import meta_schedule as ms
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    return ms


def open_database(tvm_target: dict, db_dir: Path, create: bool = True):
    """(JSONDatabase, its directory) of the target under db_dir.

    Registers the widening int8 intrinsics first: a record whose trace tensorizes with one (a
    zero-trial record of an integer kernel) replays only once the intrinsic is registered."""
    ms = meta_schedule()
    register_intrinsics()
    d = Path(db_dir) / target_key(tvm_target)
    if create:
        d.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(str(d / "database_workload.json"),
                                    str(d / "database_tuning_record.json"),
                                    allow_missing=True, module_equality="structural"), d


def fused(mod, tvm_target: dict, layout: str | None):
    """The module as build gets it: legalized and fused (run_graph_passes) unless already so."""
    ops = set(count_ops(mod)) - {"relax.call_tir"}
    return run_graph_passes(mod, tvm_target, layout=layout)[0] if ops else mod


def is_scheduled(func) -> bool:
    """Whether a PrimFunc carries the scheduled mark (a tuned record or a rule was applied)."""
    return func.attrs is not None and SCHEDULED_ATTR in func.attrs and int(func.attrs[SCHEDULED_ATTR])


def valid_seconds(record) -> float | None:
    """A record's mean run time, None when its measurement failed."""
    secs = [float(s) for s in (record.run_secs or [])]
    return sum(secs) / len(secs) if secs and max(secs) < FAILED_RUN_S else None


def _replayed(func, sch, tvm):
    """The tuned PrimFunc of a replayed schedule, with the kernel's own attributes, marked scheduled."""
    # The normalized workload is named "main": the kernel keeps its own symbol (or none).
    new = sch.mod["main"].without_attr("global_symbol")
    for key, value in (func.attrs or {}).items():  # global_symbol, noalias, op_pattern...
        if new.attrs is None or key not in new.attrs:
            new = new.with_attr(key, value)
    return new.with_attr(SCHEDULED_ATTR, tvm.tirx.IntImm("int32", 1))


def apply_database(mod, tvm_target: dict, db_dir: Path, *, layout: str | None = None):
    """Replace every kernel that has a valid record with its best schedule, marked scheduled.
    Returns (module, {"tasks", "hit", "missed"}); kernels missed keep their TE loop nest for
    the rule schedules. A missing database is not an error: everything is missed."""
    tvm = load_tvm()
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod
    mod = fused(mod, tvm_target, layout)
    db = None
    if (Path(db_dir) / target_key(tvm_target) / "database_workload.json").exists():
        db, _ = open_database(tvm_target, db_dir, create=False)
    target = tvm.target.Target(tvm_target)
    stats = {"tasks": 0, "hit": 0, "missed": 0}
    updates = {}
    for gvar, func in mod.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc) or is_scheduled(func):
            continue
        stats["tasks"] += 1
        norm = _normalize_mod(func)
        sch = None
        if db is not None and db.has_workload(norm):
            top = db.get_top_k(db.commit_workload(norm), 1)
            if top and valid_seconds(top[0]) is not None:
                sch = db.query_schedule(norm, target, gvar.name_hint)
        if sch is None:
            stats["missed"] += 1
            continue
        updates[gvar] = _replayed(func, sch, tvm)
        stats["hit"] += 1
    if updates:
        mod = mod.clone()
        for gvar, new in updates.items():
            mod.update_func(gvar, new)
    return mod, stats
