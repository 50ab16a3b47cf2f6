"""`edgecls tune`: MetaSchedule autotuning, measured here, on a board or a fleet of boards, into a
tuning database."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgecls.commands.options import boards_option, ssh_config_option, targets_dir_option


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target", "-t", required=True, help="Target name (see `edgecls targets`) or a .toml file.")
@click.option("--trials", default=2000, show_default=True, type=click.IntRange(1),
              help="Measurements in all, shared out over the model's kernels (heaviest first).")
@click.option("--time-budget", default=None, metavar="DURATION", help="Stop after e.g. 90s, 30m or 2h (between batches).")
@click.option("--early-stopping", default=None, type=click.IntRange(1), metavar="N",
              help="End a kernel's search after N measurements without a 1%% gain; its share goes unspent.")
@click.option("--board", "-b", "boards", multiple=True, metavar="NAME",
              help="Measure on this board (TVM RPC server over SSH) instead of here; repeat for a fleet "
                   "of boards of the target, shared through TVM's RPC tracker.")
@click.option("--fleet", is_flag=True, help="Measure on every board of the target in the inventory.")
@click.option("--tuning-db", type=click.Path(path_type=Path), default=None,
              help="Database directory (default $EDGECLS_TUNING_DB or ~/.cache/edgecls/tuning; one per target inside).")
@click.option("--layout", type=click.Choice(["auto", "NCHW", "NHWC"]), default="auto", show_default=True)
@click.option("--input-shape", default=None, metavar="N,C,H,W")
@click.option("--integer-kernels/--float-kernels", default=None,
              help="QDQ int8 models: tune the kernels `compile` builds with the same flag (default: "
                   "integer on CPU targets).")
@click.option("--json", "as_json", is_flag=True, help="Print the per-kernel summary as JSON.")
@boards_option
@ssh_config_option
@targets_dir_option
def tune(model, target, trials, time_budget, early_stopping, boards, fleet, tuning_db, layout, input_shape,
         integer_kernels, as_json, inventory,
         ssh_config, targets_dir):
    """Autotune MODEL's kernels for a target (MetaSchedule). Resumable: Ctrl-C keeps what was
    measured, and a second run only measures kernels short of their share of --trials. Then
    `edgecls compile MODEL --target T` applies the database's best records."""
    from edgecls.commands.views import console, err_console
    from edgecls.compile.tune import TuneRequest, parse_duration, tune_model
    from edgecls.load import parse_shape
    out = err_console if as_json else console  # --json: stdout holds the JSON only
    req = TuneRequest(model=model, target=target, trials=trials, time_budget_s=parse_duration(time_budget),
                      early_stopping=early_stopping, db_dir=tuning_db, boards=tuple(boards), fleet=fleet,
                      inventory=inventory, ssh_config=ssh_config, layout=layout,
                      input_shape=parse_shape(input_shape), targets_dir=targets_dir,
                      integer_kernels=integer_kernels)

    def progress(d):
        if d.get("event") == "task":
            best = f"{d['best_s'] * 1e3:.3f} ms" if d.get("best_s") else "-"
            gf = f", {d['gflops']:.1f} GFLOPS" if d.get("gflops") else ""
            done = " (had its share already)" if d.get("skipped") else f", {d.get('measured', 0)} measured" + (
                " (early stopping: no gain)" if d.get("converged") else "")
            out.print(f"[dim][{d.get('index', 0) + 1}/{d.get('of', '?')}] {d.get('task', '?')}: best {best}{gf}"
                          f"{done}[/dim]", highlight=False)

    summary = tune_model(req, log=lambda m: out.print(f"[dim]{m}[/dim]", highlight=False), progress=progress)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    console.print(tuning_table(summary))
    sessions = summary["sessions"]
    on = (f" on {len(sessions)} boards ({', '.join(f'{n}: {k}' for n, k in sessions.items())} sessions)"
          if len(sessions) > 1 else "")
    console.print(f"{summary['measured']} measurements{on} in {summary['wall_s']:.0f} s"
                  + (f" (stopped: {summary['stopped']})" if summary["stopped"] else "") + f"; database {summary['db']}")


def tuning_table(summary: dict):
    """Per kernel of `edgecls tune`: zero-trial vs best measured latency."""
    from rich.table import Table

    from edgecls.commands.views import fmt
    table = Table(title=f"tuning {Path(summary['model']).name} for {summary['target']} ({summary['where']})")
    for col in ("kernel", "measured", "zero-trial ms", "best ms", "speed-up", "GFLOPS"):
        table.add_column(col, justify="left" if col == "kernel" else "right")
    for t in summary["tasks"]:
        zt, best = t.get("zero_trial_ms"), t.get("best_ms")
        table.add_row(t["name"][:48], f"{t['measured']}/{t['measured_total']}", fmt(zt, ".4f"), fmt(best, ".4f"),
                      f"{zt / best:.2f}x" if zt and best else "-", fmt(t.get("gflops"), ".1f"))
    return table
