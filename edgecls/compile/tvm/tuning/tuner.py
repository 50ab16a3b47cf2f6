"""MetaSchedule autotuning of the fused kernels into the per-target database (database.py).

`tune` measures candidates, in this process, on a board or on a fleet of boards (measure.py),
and appends records to `db_dir/<target-key>/`; a later build replays them (database.apply_database).

Every task first gets one record for edgecls' own zero-trial schedule (the rule schedules),
measured by the same builder and runner, so the database picks a tuned schedule only where one
measured faster, and each task reports zero-trial vs tuned latency.

Measured traps on the 2-core dev machine, each worked around below:
* ms.builder.LocalBuilder's popen workers re-import TVM per batch, its 30 s timeout fails every
  candidate silently: builds (and local runs) happen in this process (measure.py).
* default_build and TuneContext.__init__ import tvm.s_tir.tensor_intrin: 70 s measured, 180 s
  with torch loaded (search.no_tensor_intrin); the space uses explicit rule/postproc lists (the
  "from-target" defaults pick intrinsic-based rules for VNNI/AVX-512/dotprod targets).
* tune_relax on an existing work dir spends the whole budget again: here a task with at least
  its quota of records is skipped, so a second call measures nothing and an interrupted one resumes.
* The RewriteLayout postproc would change weight layouts behind Relax's back: left out (search.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgecls.compile.tvm.core import load_tvm
from edgecls.compile.tvm.schedules import rule_schedule, rule_target
from edgecls.compile.tvm.tuning import measure, search
from edgecls.compile.tvm.tuning.database import (
    fused,
    is_scheduled,
    meta_schedule,
    open_database,
    target_key,
    valid_seconds,
)
from edgecls.compile.tvm.tuning.rpc_server import RpcSpec
from edgecls.errors import EdgeclsError

log = logging.getLogger(__name__)


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
    # and boards: {name: the same per board, plus addr and registered} (tracker.fleet).
    rpc: dict = field(default_factory=dict)


def _kernels(mod):
    """[(name, normalized IRModule)] of the PrimFuncs not scheduled yet, deduplicated."""
    tvm = load_tvm()
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod
    seen, out = set(), []
    for gvar, func in mod.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc) or is_scheduled(func):
            continue
        norm = _normalize_mod(func)
        key = meta_schedule().utils.shash2hex(norm)
        if key not in seen:
            seen.add(key)
            out.append((gvar.name_hint, norm))
    return out


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


def _budget_callback(ms, run: _Run):
    """The class of MetaSchedule's measure callback for `run`: after each batch (its records
    already committed) count, report, and stop if the budget, Ctrl-C or early stopping says so."""
    from tvm.ir.utils import derived_object

    @derived_object
    class _Budget(ms.measure_callback.PyMeasureCallback):
        def apply(self, scheduler, task_id, candidates, builder_results, runner_results):
            t = run.task
            t["measured"] += len(runner_results)
            ok = [x for x in (valid_seconds(r) for r in runner_results) if x is not None]
            gain = bool(ok) and (t["best_s"] is None or min(ok) < 0.99 * t["best_s"])
            t["stale"] = 0 if gain else t.get("stale", 0) + len(runner_results)
            t["best_s"] = min([x for x in (t["best_s"], *ok) if x is not None], default=None)
            run.progress({"event": "batch", **t})
            if run.stop():  # not terminate_task: the scheduler may terminate it too, and then aborts
                raise _Stopped(run.stop())
            if run.early_stopping and t["stale"] >= run.early_stopping:
                t["converged"] = True
                raise _Stopped("early stopping")

    return _Budget


@dataclass
class _Run:
    """One tune() call's state, shared by its kernels (tune_kernel) and the measure callback."""
    ms: object
    tvm_target: dict
    target: object  # tvm.target.Target
    db: object
    db_dir: Path  # the target's directory: records, ledger, MetaSchedule's work dir
    ledger: dict
    ledger_path: Path
    quota: int
    kernels: int
    flops: dict
    builder: object
    runner: object
    cost_model: object
    cores: int
    progress: object
    stop: object
    interrupted: list
    early_stopping: int | None
    trials_per_batch: int
    seed: int
    task: dict = field(default_factory=dict)  # the kernel being tuned, as progress() reports it
    budget: object = None  # _budget_callback's class, one per run

    def tune_kernel(self, index: int, name: str, norm) -> tuple[TaskResult, bool]:
        """Zero-trial record, then the search, up to the kernel's quota. Returns (its result,
        whether it was skipped); the ledger is written whatever happens."""
        ms, db = self.ms, self.db
        wl, key = db.commit_workload(norm), ms.utils.shash2hex(norm)
        entry = self.ledger.setdefault(key, {"name": name, "flops": self.flops[name], "measured": 0})
        top = db.get_top_k(wl, 1)
        task = self.task = {"task": name, "index": index, "of": self.kernels, "flops": self.flops[name],
                            "measured": 0, "best_s": valid_seconds(top[0]) if top else None,
                            "zero_trial_s": entry.get("zero_trial_s")}
        skipped = entry["measured"] >= self.quota or entry.get("exhausted", False) \
            or entry.get("converged_at_quota", 0) >= self.quota
        try:
            if not skipped and "zero_trial_s" not in entry and not self.stop():
                self._zero_trial(entry, norm, wl)
            left = self.quota - entry["measured"] - task["measured"]
            if not skipped and left > 0 and not self.stop():
                self._search(entry, index, name, norm, left)
        finally:  # also on a second Ctrl-C: the ledger matches the records written
            entry["measured"] += task["measured"]
            self.ledger_path.write_text(json.dumps(self.ledger, indent=1, sort_keys=True))
        top = db.get_top_k(wl, 1)
        return TaskResult(name, key, self.flops[name], entry["measured"], task["measured"], skipped,
                          entry.get("zero_trial_s"), valid_seconds(top[0]) if top else None), skipped

    def _zero_trial(self, entry: dict, norm, wl) -> None:
        """Measure the rule schedule of the kernel and record it (the baseline a tuned one beats)."""
        ms, task = self.ms, self.task
        with self.target:  # the int8 rules pick their intrinsics by the target's features
            sch = rule_schedule(norm, rule_target(self.tvm_target))[0]
        secs = measure.measure_once(sch, self.target, self.builder, self.runner) if sch is not None else None
        if secs:
            self.db.commit_tuning_record(ms.database.TuningRecord(
                sch.trace, wl, secs, self.target, ms.arg_info.ArgInfo.from_prim_func(norm["main"])))
            task["measured"] += 1
        entry["zero_trial_s"] = task["zero_trial_s"] = sum(secs) / len(secs) if secs else None
        task["best_s"] = min([x for x in (task["best_s"], task["zero_trial_s"]) if x], default=None)

    def _search(self, entry: dict, index: int, name: str, norm, left: int) -> None:
        """MetaSchedule's evolutionary search for `left` more measurements of the kernel."""
        ms, task = self.ms, self.task
        with search.no_tensor_intrin():
            ctx = ms.TuneContext(mod=norm, target=self.target, space_generator=search.space(ms),
                                 search_strategy=ms.search_strategy.EvolutionarySearch(
                                     population_size=64, init_min_unmeasured=16, genetic_num_iters=2),
                                 task_name=name, rand_state=self.seed + index, num_threads=self.cores)
        try:
            ms.tune_tasks(tasks=[ctx], task_weights=[1.0], work_dir=str(self.db_dir),
                          max_trials_global=left, num_trials_per_iter=min(self.trials_per_batch, left),
                          builder=self.builder, runner=self.runner, database=self.db, cost_model=self.cost_model,
                          measure_callbacks=[ms.measure_callback.AddToDatabase(),
                                             ms.measure_callback.RemoveBuildArtifact(),
                                             ms.measure_callback.UpdateCostModel(), self.budget()],
                          task_scheduler="round-robin")
        except Exception:  # _Stopped (or a Ctrl-C) comes back through C++ wrapped
            if not self.stop() and not task.get("converged"):
                raise
        if len(self.interrupted) > 1:
            raise KeyboardInterrupt
        if task.get("converged"):
            entry["converged_at_quota"] = self.quota
        elif not self.stop() and self.quota - entry["measured"] - task["measured"] > 0:
            entry["exhausted"] = True  # the search found no more new candidates


def tune(mod, tvm_target: dict, db_dir: Path, *, trials: int, time_budget_s: float | None = None,
         runner: str | RpcSpec | list[RpcSpec] = "local", progress=lambda d: None,
         layout: str | None = None, trials_per_batch: int = 8, seed: int = 0,
         early_stopping: int | None = None) -> TuneResult:
    """Tune the kernels of `mod` (run_graph_passes output, or an imported module, then `layout`)
    with about `trials` measurements in all, appending records to db_dir/<target-key>/.
    runner: "local", an RpcSpec (a board), or a list of them (a fleet: measure.measurer).
    One tune() at a time per database: a second one waits for the first (_db_lock).

    Each kernel gets a quota of ceil(trials / kernels) measurements, its zero-trial schedule
    first; kernels with their quota are skipped; heavy kernels (FLOPs) go first. The time budget
    and Ctrl-C stop between batches, keeping every record written so far. early_stopping=N ends
    a kernel's search after N measurements without a 1 % gain (its quota is not re-opened until
    a larger --trials gives it a larger one). progress(dict) is
    called after each batch ("event": "batch") and each kernel ("event": "task").
    """
    tvm = load_tvm()
    ms = meta_schedule()
    from tvm.s_tir.analysis import estimate_tir_flops

    if tvm_target.get("kind", "llvm") != "llvm":
        raise EdgeclsError(f"tuning supports CPU (llvm) targets only, not {tvm_target.get('kind')}")
    t0, interrupted = time.monotonic(), []
    deadline = t0 + time_budget_s if time_budget_s else math.inf
    target = tvm.target.Target(tvm_target)
    kernels = _kernels(fused(mod, tvm_target, layout))
    d = Path(db_dir) / target_key(tvm_target)
    d.mkdir(parents=True, exist_ok=True)
    result = TuneResult(d)
    quota = max(1, math.ceil(trials / max(1, len(kernels))))
    cores = int(tvm_target.get("num-cores") or len(os.sched_getaffinity(0)))
    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=40)
    flops = {name: float(estimate_tir_flops(norm)) for name, norm in kernels}
    kernels.sort(key=lambda k: -flops[k[0]])

    def stop() -> str | None:
        return "interrupted" if interrupted else "time budget" if time.monotonic() > deadline else None

    with contextlib.ExitStack() as stack:
        stack.enter_context(_ctrl_c(interrupted))
        try:
            stack.enter_context(_db_lock(d, stop))
        except _Stopped as exc:  # stopped while another tune() held the database
            result.stopped, result.seconds = str(exc), time.monotonic() - t0
            return result
        db, _ = open_database(tvm_target, db_dir)  # loaded under the lock: the last run's records
        ledger_path = d / "edgecls-tasks.json"  # per workload: name, flops, zero-trial s, measured
        ledger = json.loads(ledger_path.read_text()) if ledger_path.exists() else {}
        # A fleet's tracker key: the target key (no ':' or space, which TVM's keys cannot hold).
        builder, ms_runner = stack.enter_context(measure.measurer(runner, evaluator, d.name, result.rpc))
        run = _Run(ms, tvm_target, target, db, d, ledger, ledger_path, quota, len(kernels), flops, builder,
                   ms_runner, search.cost_model(ms, cores), cores, progress, stop, interrupted, early_stopping,
                   trials_per_batch, seed)
        run.budget = _budget_callback(ms, run)
        for index, (name, norm) in enumerate(kernels):
            res, skipped = run.tune_kernel(index, name, norm)
            result.tasks.append(res)
            result.measured += res.measured
            progress({"event": "task", **run.task, "best_s": res.best_s, "gflops": res.gflops, "skipped": skipped})
            if stop():
                result.stopped = stop()
                break
    result.seconds = time.monotonic() - t0
    return result
