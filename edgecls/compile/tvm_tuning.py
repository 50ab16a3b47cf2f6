"""MetaSchedule autotuning of the fused kernels, kept in a per-target JSON database.

Used only by tvm_adapter (and build.py): `tune` measures candidates and appends records to
`db_dir/<target-key>/`, `apply_database` swaps every kernel with a record for its best schedule
(marked `tirx.is_scheduled`, so tvm_schedules.apply_default_schedules leaves it alone).

Both work on the module run_graph_passes returns (legalized and fused, what build() gets): its
PrimFuncs are exactly the kernels that get built, so the database keys (the structural hash of
each normalized PrimFunc) match between tuning and building, and identical layers of different
models share records. Trap: ms.relax_integration.compile_relax re-runs LegalizeOps/FuseOps
itself, and on an already-fused module its MetaScheduleApplyDatabase silently finds nothing;
edgecls therefore never calls it and queries the database per PrimFunc here.

Every task first gets one record for edgecls' own zero-trial schedule (tvm_schedules), measured
by the same builder and runner, so the database picks a tuned schedule only where one measured
faster, and each task reports zero-trial vs tuned latency.

Measured traps on the 2-core dev machine, each worked around below:
* ms.builder.LocalBuilder's popen workers re-import TVM per batch, its 30 s timeout fails every
  candidate silently: builds (and local runs) happen in this process (tvm_measure).
* default_build and TuneContext.__init__ import tvm.s_tir.tensor_intrin: 70 s measured, 180 s
  with torch loaded (_no_tensor_intrin); the space uses explicit rule/postproc lists (the
  "from-target" defaults pick intrinsic-based rules for VNNI/AVX-512/dotprod targets).
* tune_relax on an existing work dir spends the whole budget again: here a task with at least
  its quota of records is skipped, so a second call measures nothing and an interrupted one resumes.
* The RewriteLayout postproc would change weight layouts behind Relax's back: left out.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgecls.compile import tvm_measure, tvm_search
from edgecls.compile.tvm_adapter import _import_tvm, count_ops, run_graph_passes
from edgecls.errors import EdgeclsError

log = logging.getLogger(__name__)
SCHEDULED_ATTR = "tirx.is_scheduled"
FAILED_RUN_S = 1e9  # MetaSchedule stores failed candidates with a huge run time


@dataclass(frozen=True)
class RpcSpec:
    """Measure on a board: an RPC server started there over SSH, reached via `ssh -L`.
    tune(runner=[spec, spec, ...]): a fleet of boards of one target, behind TVM's RPC tracker."""
    host: str  # ssh alias or user@host:port, as for SshHost
    name: str = ""  # the board's inventory name: a fleet's messages and per-board counts use it
    compiler: str = "g++"  # the target's (cross) compiler, e.g. aarch64-linux-gnu-g++
    python: str = "python3"  # the board's python, with TVM (or its runtime) importable
    ssh_config: str | None = None
    # The server needs only the runtime: skips loading the 260 MB compiler library (3 s instead
    # of 6 s to start here); random inputs then come from numpy (tvm_measure.rpc_alloc_argument).
    env: tuple[tuple[str, str], ...] = (("TVM_USE_RUNTIME_LIB", "1"),)
    session_timeout_s: int = 60


@dataclass
class TaskResult:
    name: str
    workload: str  # structural hash (hex) of the normalized PrimFunc
    flops: float
    measured_total: int  # measurements of this kernel in all calls (failed builds included)
    measured: int  # new measurements in this call
    skipped: bool  # already had its quota of measurements, or its space was exhausted
    zero_trial_s: float | None  # edgecls' rule schedule (None: the rules leave it unscheduled)
    best_s: float | None

    @property
    def gflops(self) -> float | None:
        return self.flops / self.best_s / 1e9 if self.best_s and self.flops else None


@dataclass
class TuneResult:
    db_dir: Path  # the per-target directory holding the JSON files
    tasks: list[TaskResult] = field(default_factory=list)
    measured: int = 0
    seconds: float = 0.0
    stopped: str | None = None  # "time budget" or "interrupted" when the budget was cut short
    # The RPC server's remote_pid, remote_port and sessions (served); a fleet: tracker_port, key
    # and boards: {name: the same per board, plus addr and registered} (tvm_remote.tvm_fleet).
    rpc: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- database


def target_key(tvm_target: dict) -> str:
    """A stable directory name per resolved target: readable prefix + hash of the whole dict."""
    digest = hashlib.sha256(json.dumps(tvm_target, sort_keys=True, default=str).encode()).hexdigest()
    cpu = str(tvm_target.get("mcpu") or tvm_target.get("mtriple") or "generic")
    return f"{tvm_target.get('kind', 'llvm')}-{cpu}-{digest[:12]}".replace("/", "_")


def _ms():
    _import_tvm()
    from tvm.s_tir import meta_schedule as ms
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    return ms


def open_database(tvm_target: dict, db_dir: Path, create: bool = True):
    ms = _ms()
    d = Path(db_dir) / target_key(tvm_target)
    if create:
        d.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(str(d / "database_workload.json"),
                                    str(d / "database_tuning_record.json"),
                                    allow_missing=True, module_equality="structural"), d


def _fused(mod, tvm_target: dict, layout: str | None):
    """The module as build() gets it: legalized and fused (run_graph_passes) unless already so."""
    ops = set(count_ops(mod)) - {"relax.call_tir"}
    return run_graph_passes(mod, tvm_target, layout=layout)[0] if ops else mod


def _kernels(mod):
    """[(name, normalized IRModule)] of the PrimFuncs not scheduled yet, deduplicated."""
    tvm = _import_tvm()
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod
    seen, out = set(), []
    for gvar, func in mod.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        if func.attrs is not None and SCHEDULED_ATTR in func.attrs and int(func.attrs[SCHEDULED_ATTR]):
            continue
        norm = _normalize_mod(func)
        key = _ms().utils.shash2hex(norm)
        if key not in seen:
            seen.add(key)
            out.append((gvar.name_hint, norm))
    return out


def _valid_s(record) -> float | None:
    secs = [float(s) for s in (record.run_secs or [])]
    return sum(secs) / len(secs) if secs and max(secs) < FAILED_RUN_S else None


def apply_database(mod, tvm_target: dict, db_dir: Path, *, layout: str | None = None):
    """Replace every kernel that has a valid record with its best schedule, marked scheduled.
    Returns (module, {"tasks", "hit", "missed"}); kernels missed keep their TE loop nest for
    apply_default_schedules. A missing database is not an error: everything is missed."""
    tvm = _import_tvm()
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod
    mod = _fused(mod, tvm_target, layout)
    db = None
    if (Path(db_dir) / target_key(tvm_target) / "database_workload.json").exists():
        db, _ = open_database(tvm_target, db_dir, create=False)
    target = tvm.target.Target(tvm_target)
    stats = {"tasks": 0, "hit": 0, "missed": 0}
    updates = {}
    for gvar, func in mod.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        if func.attrs is not None and SCHEDULED_ATTR in func.attrs and int(func.attrs[SCHEDULED_ATTR]):
            continue
        stats["tasks"] += 1
        norm = _normalize_mod(func)
        sch = None
        if db is not None and db.has_workload(norm):
            top = db.get_top_k(db.commit_workload(norm), 1)
            if top and _valid_s(top[0]) is not None:
                sch = db.query_schedule(norm, target, gvar.name_hint)
        if sch is None:
            stats["missed"] += 1
            continue
        # The normalized workload is named "main": the kernel keeps its own symbol (or none).
        new = sch.mod["main"].without_attr("global_symbol")
        for key, value in (func.attrs or {}).items():  # global_symbol, noalias, op_pattern...
            if new.attrs is None or key not in new.attrs:
                new = new.with_attr(key, value)
        updates[gvar] = new.with_attr(SCHEDULED_ATTR, tvm.tirx.IntImm("int32", 1))
        stats["hit"] += 1
    if updates:
        mod = mod.clone()
        for gvar, new in updates.items():
            mod.update_func(gvar, new)
    return mod, stats


# --------------------------------------------------------------------------- tuning


@contextlib.contextmanager
def _ctrl_c(flag: list):
    """First Ctrl-C: set `flag`, stop after the running batch (raising inside MetaSchedule's C++
    loop or xgboost's training surfaces as an opaque RuntimeError). Second: abort."""
    def handler(signum, frame):
        flag.append(True)
        if len(flag) > 1:
            raise KeyboardInterrupt
        log.warning("Ctrl-C: stopping after this batch (again to abort)")
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


class _Stopped(Exception):
    """Raised from the measure callback to end a task between batches."""


@contextlib.contextmanager
def _db_lock(d: Path, stop):
    """Hold an exclusive flock on d/edgecls-tune.lock: a second tune() on the same database
    would otherwise load the records and ledger before the first one's last writes, measure the
    same candidates again and overwrite the ledger (edgecls-tasks.json) with its own counts.
    Waits (saying for whom) rather than fails: a queued run is what a user starting two wants.
    Polls, so that Ctrl-C or the time budget (stop() not None) ends the wait: raises _Stopped."""
    fd = os.open(d / "edgecls-tune.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        waiting = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                    log.warning("waiting for tuning database lock held by pid %s (%s)", holder, d)
                    waiting = True
                if stop():
                    raise _Stopped(stop()) from None
                time.sleep(0.25)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # for the next one's message
        yield
    finally:
        os.close(fd)  # releases the lock



def tune(mod, tvm_target: dict, db_dir: Path, *, trials: int, time_budget_s: float | None = None,
         runner: str | RpcSpec | list[RpcSpec] = "local", progress=lambda d: None,
         layout: str | None = None, trials_per_batch: int = 8, seed: int = 0,
         early_stopping: int | None = None) -> TuneResult:
    """Tune the kernels of `mod` (run_graph_passes output, or an imported module, then `layout`)
    with about `trials` measurements in all, appending records to db_dir/<target-key>/.
    runner: "local", an RpcSpec (a board), or a list of them (a fleet: tvm_measure.measurer).
    One tune() at a time per database: a second one waits for the first (_db_lock).

    Each kernel gets a quota of ceil(trials / kernels) measurements, its zero-trial schedule
    first; kernels with their quota are skipped; heavy kernels (FLOPs) go first. The time budget
    and Ctrl-C stop between batches, keeping every record written so far. early_stopping=N ends
    a kernel's search after N measurements without a 1 % gain (its quota is not re-opened until
    a larger --trials gives it a larger one). progress(dict) is
    called after each batch ("event": "batch") and each kernel ("event": "task").
    """
    tvm = _import_tvm()
    ms = _ms()
    from tvm.ir.utils import derived_object
    from tvm.s_tir.analysis import estimate_tir_flops

    from edgecls.compile.tvm_schedules import rule_schedule, simd_lanes
    if tvm_target.get("kind", "llvm") != "llvm":
        raise EdgeclsError(f"tuning supports CPU (llvm) targets only, not {tvm_target.get('kind')}")
    t0, interrupted = time.monotonic(), []
    deadline = t0 + time_budget_s if time_budget_s else math.inf
    target = tvm.target.Target(tvm_target)
    kernels = _kernels(_fused(mod, tvm_target, layout))
    d = Path(db_dir) / target_key(tvm_target)
    d.mkdir(parents=True, exist_ok=True)
    result = TuneResult(d)
    ledger_path = d / "edgecls-tasks.json"  # per workload: name, flops, zero-trial s, measured
    quota = max(1, math.ceil(trials / max(1, len(kernels))))
    cores = int(tvm_target.get("num-cores") or len(os.sched_getaffinity(0)))
    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=40)
    flops = {name: float(estimate_tir_flops(norm)) for name, norm in kernels}
    kernels.sort(key=lambda k: -flops[k[0]])

    def stop() -> str | None:
        return "interrupted" if interrupted else "time budget" if time.monotonic() > deadline else None

    current: dict = {}

    @derived_object
    class _Budget(ms.measure_callback.PyMeasureCallback):
        """After each batch (its records already committed): count, report, stop if asked."""

        def apply(self, scheduler, task_id, candidates, builder_results, runner_results):
            t = current["task"]
            t["measured"] += len(runner_results)
            ok = [x for x in (_valid_s(r) for r in runner_results) if x is not None]
            gain = bool(ok) and (t["best_s"] is None or min(ok) < 0.99 * t["best_s"])
            t["stale"] = 0 if gain else t.get("stale", 0) + len(runner_results)
            t["best_s"] = min([x for x in (t["best_s"], *ok) if x is not None], default=None)
            progress({"event": "batch", **t})
            if stop():  # not terminate_task: the scheduler may terminate it too, and then aborts
                raise _Stopped(stop())
            if early_stopping and t["stale"] >= early_stopping:
                t["converged"] = True
                raise _Stopped("early stopping")

    with contextlib.ExitStack() as stack:
        stack.enter_context(_ctrl_c(interrupted))
        try:
            stack.enter_context(_db_lock(d, stop))
        except _Stopped as exc:  # stopped while another tune() held the database
            result.stopped, result.seconds = str(exc), time.monotonic() - t0
            return result
        db, _ = open_database(tvm_target, db_dir)  # loaded under the lock: the last run's records
        ledger = json.loads(ledger_path.read_text()) if ledger_path.exists() else {}
        # A fleet's tracker key: the target key (no ':' or space, which TVM's keys cannot hold).
        builder, measure = stack.enter_context(tvm_measure.measurer(runner, evaluator, d.name, result.rpc))
        cost_model = tvm_search.cost_model(ms, cores)
        for index, (name, norm) in enumerate(kernels):
            wl, key = db.commit_workload(norm), ms.utils.shash2hex(norm)
            entry = ledger.setdefault(key, {"name": name, "flops": flops[name], "measured": 0})
            top = db.get_top_k(wl, 1)
            task = current["task"] = {"task": name, "index": index, "of": len(kernels), "flops": flops[name],
                                      "measured": 0, "best_s": _valid_s(top[0]) if top else None,
                                      "zero_trial_s": entry.get("zero_trial_s")}
            skipped = entry["measured"] >= quota or entry.get("exhausted", False) \
                or entry.get("converged_at_quota", 0) >= quota
            try:
                if not skipped and "zero_trial_s" not in entry and not stop():
                    with target:  # the int8 rules pick their intrinsics by the target's features
                        sch = rule_schedule(norm, simd_lanes(tvm_target))[0]
                    secs = tvm_measure.measure_once(sch, target, builder, measure) if sch is not None else None
                    if secs:
                        db.commit_tuning_record(ms.database.TuningRecord(
                            sch.trace, wl, secs, target, ms.arg_info.ArgInfo.from_prim_func(norm["main"])))
                        task["measured"] += 1
                    entry["zero_trial_s"] = task["zero_trial_s"] = sum(secs) / len(secs) if secs else None
                    task["best_s"] = min([x for x in (task["best_s"], task["zero_trial_s"]) if x], default=None)
                left = quota - entry["measured"] - task["measured"]
                if not skipped and left > 0 and not stop():
                    with tvm_search.no_tensor_intrin():
                        ctx = ms.TuneContext(mod=norm, target=target, space_generator=tvm_search.space(ms),
                                             search_strategy=ms.search_strategy.EvolutionarySearch(
                                                 population_size=64, init_min_unmeasured=16, genetic_num_iters=2),
                                             task_name=name, rand_state=seed + index, num_threads=cores)
                    try:
                        ms.tune_tasks(tasks=[ctx], task_weights=[1.0], work_dir=str(d), max_trials_global=left,
                                      num_trials_per_iter=min(trials_per_batch, left), builder=builder,
                                      runner=measure, database=db, cost_model=cost_model,
                                      measure_callbacks=[ms.measure_callback.AddToDatabase(),
                                                         ms.measure_callback.RemoveBuildArtifact(),
                                                         ms.measure_callback.UpdateCostModel(), _Budget()],
                                      task_scheduler="round-robin")
                    except Exception:  # _Stopped (or a Ctrl-C) comes back through C++ wrapped
                        if not stop() and not task.get("converged"):
                            raise
                    if len(interrupted) > 1:
                        raise KeyboardInterrupt
                    if task.get("converged"):
                        entry["converged_at_quota"] = quota
                    elif not stop() and quota - entry["measured"] - task["measured"] > 0:
                        entry["exhausted"] = True  # the search found no more new candidates
            finally:  # also on a second Ctrl-C: the ledger matches the records written
                entry["measured"] += task["measured"]
                ledger_path.write_text(json.dumps(ledger, indent=1, sort_keys=True))
            top = db.get_top_k(wl, 1)
            res = TaskResult(name, key, flops[name], entry["measured"], task["measured"], skipped,
                             entry.get("zero_trial_s"), _valid_s(top[0]) if top else None)
            result.tasks.append(res)
            result.measured += res.measured
            progress({"event": "task", **task, "best_s": res.best_s, "gflops": res.gflops, "skipped": skipped})
            if stop():
                result.stopped = stop()
                break
    result.seconds = time.monotonic() - t0
    return result
