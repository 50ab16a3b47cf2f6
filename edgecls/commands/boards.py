"""Board commands: `edgecls boards add/list/check/setup/remove`, `deploy`, `bench`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgecls.artifact.harness.contract import PRECISIONS
from edgecls.commands.options import (accept_new_option, boards_option, mlflow_option, ssh_config_option,
                                      targets_dir_option)
from edgecls.errors import EdgeclsError, UsageError  # noqa: F401


@click.group()
def boards():
    """Board inventory: boards reached over SSH with your own ~/.ssh/config."""


@boards.command("add")
@click.argument("name")
@click.option("--host", required=True, help="ssh alias from ~/.ssh/config, or user@host:port.")
@click.option("--target", "-t", required=True, help="Target name of the board (see `edgecls targets`).")
@click.option("--workdir", default="edgecls", show_default=True, help="Remote work dir (relative to home, or absolute).")
@click.option("--emulator", default="", help="Prefix that runs the artifact's binaries, e.g. 'qemu-aarch64 -L /usr/aarch64-linux-gnu'.")
@click.option("--python", "python", default="python3", show_default=True, help="Python on the board for the ORT/LiteRT harness.")
@click.option("--replace", is_flag=True, help="Replace a board of the same name.")
@boards_option
@targets_dir_option
def boards_add(name, host, target, workdir, emulator, python, replace, inventory, targets_dir):
    """Add a board to the inventory."""
    import shlex
    from edgecls.remote.boards import Board, add_board, inventory_path
    board = Board(name=name, host=host, target=target, workdir=workdir,
                  emulator=tuple(shlex.split(emulator)), python=python)
    add_board(inventory, board, replace=replace, targets_dir=targets_dir)
    click.echo(f"board {name} ({target}, {host}) added to {inventory_path(inventory)}")


@boards.command("list")
@click.option("--no-ping", is_flag=True, help="Do not try to reach the boards.")
@boards_option
@ssh_config_option
def boards_list(no_ping, inventory, ssh_config):
    """Boards in the inventory: name, target, host, reachable?, last seen."""
    from edgecls.remote.boards import load_boards
    from edgecls.remote.ping import ping_boards
    from edgecls.report.console import boards_table, console
    found = load_boards(inventory)
    console.print(boards_table(found, {} if no_ping else ping_boards(list(found.values()), ssh_config)))


@boards.command("check")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@boards_option
@ssh_config_option
@accept_new_option
@targets_dir_option
def boards_check(name, as_json, inventory, ssh_config, accept_new_host_key, targets_dir):
    """Connect and report: arch, glibc, cores, governor, free disk, temperatures, runtimes."""
    from edgecls.remote.board_check import check_board
    from edgecls.remote.boards import connect, get_board
    from edgecls.report.console import board_check_view
    board = get_board(name, inventory)
    with connect(board, ssh_config=ssh_config, accept_new_host_key=accept_new_host_key) as ssh:
        info = check_board(board, ssh, inventory=inventory, targets_dir=targets_dir)
    click.echo(json.dumps(info, indent=2)) if as_json else board_check_view(board, info)


@boards.command("setup")
@click.argument("name")
@click.option("--force", is_flag=True, help="Reinstall even when the board already has this TVM.")
@boards_option
@ssh_config_option
@accept_new_option
def boards_setup(name, force, inventory, ssh_config, accept_new_host_key):
    """Install TVM's Python runtime on the board for `edgecls tune --board` (wheels pushed from here)."""
    from edgecls.remote.board_tvm import setup_board
    from edgecls.remote.boards import connect, get_board
    board = get_board(name, inventory)
    with connect(board, ssh_config=ssh_config, accept_new_host_key=accept_new_host_key) as ssh:
        info = setup_board(board, ssh, inventory=inventory, force=force, log=lambda m: click.echo(m, err=True))
    click.echo(f"{name}: TVM {info['tvm']} {info['status']} ({info['tvm_python']})")


@boards.command("remove")
@click.argument("name")
@boards_option
def boards_remove(name, inventory):
    """Remove a board from the inventory."""
    from edgecls.remote.boards import remove_board
    remove_board(inventory, name)
    click.echo(f"board {name} removed")


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--board", "-b", "board_name", required=True)
@boards_option
@ssh_config_option
@accept_new_option
def deploy(artifact, board_name, inventory, ssh_config, accept_new_host_key):
    """Upload an artifact to a board: atomic, checksum-verified on the board, resumable."""
    from edgecls.remote.boards import connect, get_board
    from edgecls.remote.deploy import deploy as deploy_artifact
    board = get_board(board_name, inventory)
    with connect(board, ssh_config=ssh_config, accept_new_host_key=accept_new_host_key) as ssh:
        result = deploy_artifact(artifact, board, ssh, log=lambda m: click.echo(m, err=True))
    what = "already there, verified" if result.reused else f"{result.files} files, {result.uploaded_bytes} bytes sent, verified"
    click.echo(f"deployed {artifact} to {board.name}:{result.remote_path} ({what})")


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--board", "-b", "board_spec", default=None, help="Board name(s): b1,b2 or all.")
@click.option("--local", is_flag=True, help="Measure on this machine.")
@click.option("--emulate", is_flag=True, help="With --local: run a foreign-arch artifact under qemu.")
@click.option("--runtime", default=None, help="auto (every CPU runtime the artifact carries; the fastest is "
              "recorded) or a comma list of tvm,onnxruntime,tflite,tensorrt. Default: the artifact's backend "
              "(compile --backend), else tvm.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="TensorRT engine precision (--runtime tensorrt; auto: int8 for a QDQ model, else fp32).")
@click.option("--threads", type=click.IntRange(1, 256), default=None)
@click.option("--cores", default=None, help="big | little | all | CPU list like 4,5 or 0-3.")
@click.option("--runs", default=50, show_default=True, type=click.IntRange(1))
@click.option("--warmup", default=5, show_default=True, type=click.IntRange(0))
@click.option("--warmup-ms", default=0.0, show_default=True, type=click.FloatRange(0))
@click.option("--min-ms", default=0.0, show_default=True, type=click.FloatRange(0), help="Time runs for at least this long.")
@click.option("--cooldown-ms", default=0.0, show_default=True, type=click.FloatRange(0))
@click.option("--parallel", default=4, show_default=True, type=click.IntRange(1, 64), help="Boards measured at once.")
@click.option("--batch", "batches", default="1", show_default=True, metavar="1,2,4,8",
              help="TVM batch sizes to measure (the artifact needs them: compile --batch-sizes).")
@click.option("--latency-budget", type=click.FloatRange(0, min_open=True), default=None, metavar="MS",
              help="With --batch: recommend the batch size with most images/s whose median fits.")
@click.option("--output", "-o", "out_dir", default="reports", show_default=True, type=click.Path(path_type=Path))
@boards_option
@ssh_config_option
@accept_new_option
@mlflow_option
def bench(artifact, board_spec, local, emulate, runtime, precision, threads, cores, runs, warmup, warmup_ms, min_ms,
          cooldown_ms, parallel, batches, latency_budget, out_dir, inventory, ssh_config, accept_new_host_key,
          mlflow_uri):
    """Benchmark an artifact on boards (in parallel) or locally; one JSON report per board and runtime."""
    from rich.live import Live
    from edgecls.bench.harness import BenchOptions, parse_runtimes
    from edgecls.bench.run import make_places, run_bench
    from edgecls.artifact.batches import parse_batches
    from edgecls.bench.tensorrt import check_precision
    from edgecls.report.console import bench_summary, console, fleet_table
    runtimes = parse_runtimes(runtime)
    if mlflow_uri:
        from edgecls.report.mlflow_log import require_mlflow
        require_mlflow()
    opts = BenchOptions(runtimes=runtimes, threads=threads, cores=cores, runs=runs,
                        warmup=warmup, warmup_ms=warmup_ms, min_ms=min_ms, cooldown_ms=cooldown_ms,
                        extra={"precision": check_precision(precision, runtimes)},
                        batches=parse_batches(batches), latency_budget_ms=latency_budget)
    places = make_places(board_spec, local, emulate, inventory, ssh_config, accept_new_host_key)
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        results = run_bench(artifact, places, opts, out_dir, parallel,
                            on_change=lambda rs: live.update(fleet_table(rs)))
    failed = bench_summary(results)
    if mlflow_uri:
        from edgecls.report.mlflow_log import log_bench
        runs_logged = log_bench(mlflow_uri, [p for r in results for p in r.reports])
        console.print(f"mlflow: {len(runs_logged)} run(s) logged to {mlflow_uri}")
    if failed:
        if len(results) == 1:  # one place: its own error is the message
            raise EdgeclsError(results[0].detail)
        raise EdgeclsError(f"{failed} of {len(results)} place(s) failed; reports of the others are in {out_dir}")
