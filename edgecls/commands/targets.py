"""`edgecls targets [show NAME]`: the known board types."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from edgecls.commands.options import targets_dir_option

if TYPE_CHECKING:
    from edgecls.targets import Target


@click.group(invoke_without_command=True)
@targets_dir_option
@click.pass_context
def targets(ctx, targets_dir):
    """List known targets (board types)."""
    ctx.obj = {"targets_dir": targets_dir}
    if ctx.invoked_subcommand is None:
        from edgecls.targets import load_targets
        targets_table(load_targets(targets_dir))


@targets.command("show")
@click.argument("name")
@click.pass_context
def targets_show(ctx, name):
    """Show one target: TVM target, cores, cross compiler, runtimes."""
    from edgecls.targets import get_target
    target_detail(get_target(name, ctx.obj["targets_dir"]))


def targets_table(targets: dict[str, Target]) -> None:
    from rich.table import Table

    from edgecls.commands.views import console
    table = Table(title="edgecls targets")
    for col in ("name", "arch", "cpu", "cores", "layout"):
        table.add_column(col, no_wrap=True)
    table.add_column("description", overflow="fold", ratio=1)
    for t in sorted(targets.values(), key=lambda t: t.name):
        table.add_row(t.name, t.arch, str(t.tvm.get("mcpu", "")), str(t.tvm.get("num-cores", "") or "all"),
                      t.layout, t.description)
    console.print(table)


def target_detail(t: Target) -> None:
    from rich.table import Table

    from edgecls.commands.views import console
    table = Table(show_header=False, title=f"target {t.name}")
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    rows = [
        ("description", t.description), ("arch / triple", f"{t.arch} / {t.triple}"),
        ("TVM target", json.dumps(t.tvm)), ("preferred layout", t.layout),
        ("C++ compiler", f"{t.compiler} (Debian: {t.compiler_package or '-'})"),
        ("emulator", " ".join(t.emulator) or "- (native)"),
        ("CPU clusters", ", ".join(f"{k}: {list(v)}" for k, v in t.cpus.items()) or "-"),
        ("runtimes", ", ".join(t.runtimes)), ("defined in", t.source),
    ]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
