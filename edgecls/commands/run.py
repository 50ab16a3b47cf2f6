"""`edgecls run`: one inference of an artifact on this machine, top-k printed."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--input", "-i", "input_path", type=click.Path(path_type=Path), default=None,
              help="An image (preprocessed as the manifest says) or a .npy tensor; "
                   "default: the artifact's reference input.")
@click.option("--emulate", is_flag=True, help="Run a foreign-arch artifact under qemu on this machine.")
@click.option("--topk", default=5, show_default=True, type=click.IntRange(1, 1000))
@click.option("--threads", default=None, type=click.IntRange(1, 256), help="TVM runtime threads.")
@click.option("--save-output", type=click.Path(path_type=Path), default=None, help="Write the output tensor (.npy).")
@click.option("--json", "as_json", is_flag=True, help="Print the runner's report as JSON.")
def run(artifact, input_path, emulate, topk, threads, save_output, as_json):
    """Run an artifact on this machine (natively, or under qemu with --emulate) and print top-k."""
    from edgecls.artifact.execute import predict
    report = predict(artifact, input_path, emulate=emulate, topk=topk, save_output=save_output, threads=threads)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        topk_view(report)


def topk_view(report: dict) -> None:
    from rich.table import Table

    from edgecls.commands.views import console
    t = report["timings_ms"]
    table = Table(title=f"top-{len(report['topk'])}: {report['artifact']} ({report['target']}, "
                        f"{report['where']}; one run {t['median']:.2f} ms, not a benchmark)")
    table.add_column("rank", justify="right")
    table.add_column("class")
    table.add_column("index", justify="right")
    table.add_column("score", justify="right")
    for i, item in enumerate(report["topk"], 1):
        table.add_row(str(i), item["label"], str(item["index"]), f"{item['score']:.6g}")
    console.print(table)
    if "reference_max_abs_diff" in report:
        console.print(f"reference input: max |diff| vs ONNX Runtime output {report['reference_max_abs_diff']:.3g}")
    if report.get("saved_output"):
        console.print(f"output tensor saved to {report['saved_output']}")
