"""`edgecls boards add/list/check/setup/remove`: the board inventory."""

from __future__ import annotations

import json

import click

from edgecls.commands.options import accept_new_option, boards_option, ssh_config_option, targets_dir_option


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
    from edgecls.commands.views import console
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


def boards_table(boards: dict, reachable: dict):
    from rich.table import Table
    table = Table(title="boards")
    for col in ("name", "target", "host", "workdir", "reachable", "last seen"):
        table.add_column(col)
    for b in sorted(boards.values(), key=lambda b: b.name):
        r = reachable.get(b.name)
        state = "-" if r is None else ("[green]yes" if r is True else f"[red]no[/red] {r}")
        table.add_row(b.name, b.target, b.host, b.workdir, state, b.last_seen or "never")
    return table


def board_check_view(board, info: dict) -> None:
    from rich.table import Table

    from edgecls.commands.views import console
    table = Table(show_header=False, title=f"board {board.name} ({board.host})")
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    cpus = info.get("cpus") or []
    governors = sorted({c.get("governor") or "?" for c in cpus})
    rows = [("arch / kernel", f"{info.get('arch')} / {info.get('kernel')}"), ("glibc", info.get("glibc")),
            ("cores", f"{info.get('nproc')} (governor {', '.join(governors) or '?'})"),
            ("max freq kHz", ", ".join(f"cpu{c.get('cpu')}:{c.get('max_khz')}" for c in cpus) or "-"),
            ("workdir", f"{info.get('workdir')} ({info.get('disk_free_kb')} kB free)"),
            ("temperatures", ", ".join(f"{t.get('type')} {t.get('temp_c')} C" for t in info.get("thermal") or []) or "-"),
            ("tools", ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in (info.get("tools") or {}).items())),
            ("python packages", ", ".join(f"{k} {v or 'no'}" for k, v in (info.get("python_packages") or {}).items())),
            ("warnings", info.get("warning") or "none")]
    for k, v in rows:
        table.add_row(k, str(v))
    console.print(table)
