"""The `edgecls tune` job: MetaSchedule on this machine or on a board, into a tuning database.

Policy lives here (which database, which runner, what budget); the mechanism is in
edgecls.compile.tvm (tuning/).
The kernels tuned are exactly those `compile` builds (same import, passes and layout: the
database is keyed by the kernels' structure), so a later `compile --tuning-db` applies them.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from edgecls.compile import tvm as tvm_adapter
from edgecls.errors import UsageError


def default_tuning_db() -> Path:
    """$EDGECLS_TUNING_DB, else ~/.cache/edgecls/tuning (one sub-database per target inside)."""
    env = os.environ.get("EDGECLS_TUNING_DB")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgecls" / "tuning"


def parse_duration(text: str | None) -> float | None:
    """'30m', '2h', '90s', '45' (seconds) -> seconds."""
    if not text:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not m:
        raise UsageError(f"--time-budget '{text}' is not a duration like 90s, 30m or 2h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


@dataclass
class TuneRequest:
    model: Path
    target: str
    trials: int = 2000
    time_budget_s: float | None = None
    early_stopping: int | None = None  # measurements without a 1 % gain that end a kernel's search
    db_dir: Path | None = None  # default_tuning_db()
    boards: tuple[str, ...] = ()  # measure on these boards (inventory names) instead of here
    fleet: bool = False  # measure on every inventory board of the target
    inventory: Path | None = None
    ssh_config: Path | None = None
    layout: str = "auto"
    input_shape: tuple[int, ...] | None = None
    targets_dir: str | None = None
    integer_kernels: bool | None = None  # QDQ int8: the kernels `compile` builds (None: its default)


def _boards(req: TuneRequest, target) -> list:
    """The inventory boards to measure on: --board names (each must be a real board of the
    target), or with --fleet every non-emulated board of the target."""
    from edgecls.remote.boards import get_board, inventory_path, load_boards
    if req.fleet:
        if req.boards:
            raise UsageError("--fleet takes every board of the target: give it or --board, not both")
        boards = [b for b in load_boards(req.inventory).values() if b.target == target.name and not b.emulator]
        if not boards:
            raise UsageError(f"--fleet: no board of target {target.name} (not emulated) in "
                             f"{inventory_path(req.inventory)}; add one with: edgecls boards add")
        return boards
    boards = [get_board(name, req.inventory) for name in dict.fromkeys(req.boards)]
    for board in boards:
        if board.target != target.name:
            raise UsageError(f"board {board.name} is a {board.target}, not a {target.name}")
        if board.emulator:
            raise UsageError(f"board {board.name} is emulated ({' '.join(board.emulator)}): tuning needs "
                             f"real measurements on the board's CPU")
    return boards


def _runner(req: TuneRequest, target):
    """"local"; an RpcSpec for one board (its python runs TVM's RPC server, reached over SSH); or
    a list of them, one per board: a fleet, measured through TVM's RPC tracker here."""
    from edgecls.artifact.runtime_libs import host_arch
    if not req.boards and not req.fleet:
        if target.arch != host_arch():
            raise UsageError(f"target {target.name} is {target.arch}: measure on a board of it with "
                             f"--board NAME or --fleet (this machine is {host_arch()})")
        return "local", "this machine"
    from edgecls.remote.board_tvm import tvm_python
    boards = _boards(req, target)
    specs = [tvm_adapter.RpcSpec(host=b.host, name=b.name, compiler=target.compiler, python=tvm_python(b),
                                 ssh_config=str(req.ssh_config) if req.ssh_config else None) for b in boards]
    if len(specs) == 1:
        return specs[0], f"board {boards[0].name} ({boards[0].host}) over SSH"
    return specs, f"{len(specs)} boards ({', '.join(b.name for b in boards)}) over SSH through TVM's RPC tracker"


def tune_model(req: TuneRequest, log=lambda msg: None, progress=None) -> dict:
    """Tune every kernel of the model for the target; returns a summary (also the CLI's table)."""
    from edgecls.compile.build import fuse_model
    from edgecls.load import load_model
    from edgecls.targets import get_target

    if req.trials < 1:
        raise UsageError(f"--trials must be at least 1, got {req.trials}")
    target = get_target(req.target, req.targets_dir)
    target.require_compiler()
    runner, where = _runner(req, target)
    db_dir = Path(req.db_dir or default_tuning_db()).expanduser()
    model = load_model(req.model, req.input_shape)
    graph = fuse_model(model, target, req.layout, log, req.integer_kernels)
    log(f"tuning {model.path.name} for {target.name} on {where}: {req.trials} trials"
        + (f", at most {req.time_budget_s:.0f} s" if req.time_budget_s else "") + f"; database {db_dir}")
    t0 = time.perf_counter()
    result = tvm_adapter.tune(graph.mod, graph.tvm_target, db_dir, trials=req.trials,
                              time_budget_s=req.time_budget_s, early_stopping=req.early_stopping, runner=runner,
                              progress=progress or (lambda d: None))
    ms = lambda s: round(s * 1e3, 6) if s else None  # noqa: E731
    # RPC sessions each board served (one per measurement): how the work spread over a fleet.
    per_board = result.rpc.get("boards") or ({runner.name: result.rpc} if result.rpc else {})
    return {"model": str(model.path), "model_sha256": model.sha256, "target": target.name, "where": where,
            "db": str(result.db_dir), "trials": req.trials, "measured": result.measured,
            "stopped": result.stopped, "seconds": round(result.seconds, 2),
            "wall_s": round(time.perf_counter() - t0, 2),
            "sessions": {name: b.get("sessions", 0) for name, b in per_board.items()},
            "tasks": [{"name": t.name, "flops": t.flops, "measured": t.measured, "measured_total": t.measured_total,
                       "skipped": t.skipped, "zero_trial_ms": ms(t.zero_trial_s), "best_ms": ms(t.best_s),
                       "gflops": round(t.gflops, 2) if t.gflops else None} for t in result.tasks]}
