"""`edgecls inspect`: what is inside an artifact and how it was made."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def inspect(artifact, as_json):
    """Show what is inside an artifact and how it was made."""
    from edgecls.artifact.manifest import read_manifest, verify_files
    manifest = read_manifest(artifact)
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
        return
    inspect_view(manifest, verify_files(artifact, manifest))


def inspect_view(m: dict, intact_problems: list[str]) -> None:
    from edgecls.commands.views import console
    console.print(_summary_table(m, intact_problems))
    console.print(_files_table(m))
    console.print(_passes_table(m))


def _summary_table(m: dict, intact_problems: list[str]):
    from rich.table import Table
    model, target, stats = m["model"], m["target"], m.get("stats", {})
    head = Table(show_header=False, title="edgecls artifact")
    head.add_column("key", style="bold")
    head.add_column("value", overflow="fold")
    verification = m.get("verification", {})
    ver = verification.get("how", "-")
    if "max_abs_diff" in verification:
        ver += f", max |diff| vs {verification['reference']} {verification['max_abs_diff']:.2e}, " \
               f"top-5 match {verification['top5_match']}"
    rows = [
        ("model", f"{model['source']} ({model['format']}, sha256 {model['sha256'][:16]}…)"),
        ("input", f"{model['input']['name']} {model['input']['shape']} {model['input']['dtype']}"),
        ("output", f"{model['output']['name']} {model['output']['shape']} {model['output']['dtype']}"),
        ("target", f"{target['name']} ({target['arch']}) {json.dumps(target['tvm_resolved'])}"),
        ("layout", f"{m['layout']['chosen']} (asked {m['layout']['requested']}: {m['layout']['reason']})"),
        ("preprocess", json.dumps(m.get("preprocess")) + _from((m.get("options") or {}).get("preprocess_from"))),
        ("accuracy", _accuracy_line(m)),
        ("labels", ", ".join(m["labels"][:10]) + (" …" if len(m["labels"]) > 10 else "") if m.get("labels") else "-"),
        ("convs / BN", f"{stats.get('convs')} convs; BatchNorm {stats.get('batch_norm_in_graph')} in graph, "
                       f"{stats.get('batch_norm_left')} left unfolded"),
        ("kernels", f"{stats.get('kernels')} kernels; {stats.get('fused_conv_kernels')}/{stats.get('conv_kernels')} "
                    f"conv kernels carry a fused epilogue; {stats.get('unfused_epilogues')} unfused epilogues"),
        ("runner", f"{m['runner']['file']} ({m['runner']['arch']}), needs glibc >= {m['runner']['glibc_required']}"),
        ("verified", ver),
        ("made by", ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items() if v is not None)),
        ("created", f"{m['created']} in {m.get('timings', {}).get('total_s', '?')} s"),
        ("integrity", "all files match their sha256" if not intact_problems else "; ".join(intact_problems)),
    ]
    for k, v in rows:
        head.add_row(k, str(v))
    return head


def _from(source: str | None) -> str:
    return f" from {source}" if source else ""


def _accuracy_line(m: dict) -> str:
    """top-1 of the first and last stage on the validation split, and the gate's verdict."""
    stages = [st for st in m.get("stages") or [] if st.get("top1") is not None]
    if not stages:
        return "-"
    line = " -> ".join(f"{st['stage']} {st['top1']:.4f}" for st in (stages[0], stages[-1])[:len(stages)])
    line += f" on {stages[-1]['n']} validation images" if stages[-1].get("n") else ""
    gate = m.get("acceptance") or {}
    if gate.get("max_accuracy_drop") is not None:
        verdict = "accepted" if gate.get("accepted") else "REJECTED"
        ci = gate.get("ci95_points")
        line += (f"; gate {gate['max_accuracy_drop']:g} points: {verdict}" +
                 (f" (drop {gate['drop_points']:.2f}, 95 % CI {ci[0]:.2f} to {ci[1]:.2f})" if ci else ""))
    return line


def _files_table(m: dict):
    from rich.table import Table

    from edgecls.commands.views import human_size
    files = Table(title="files")
    files.add_column("file")
    files.add_column("size", justify="right")
    files.add_column("sha256")
    total = 0
    for rel, info in m.get("files", {}).items():
        total += info["size"]
        files.add_row(rel, human_size(info["size"]), info["sha256"][:16] + "…")
    files.add_row("[bold]total", human_size(total), "")
    return files


def _passes_table(m: dict):
    from rich.table import Table
    passes = Table(title="graph passes")
    passes.add_column("pass")
    passes.add_column("seconds", justify="right")
    passes.add_column("detail")
    for p in m.get("passes", []):
        passes.add_row(p["name"], f"{p['seconds']:.3f}", json.dumps(p.get("detail", "")) if p.get("detail") else "")
    return passes
