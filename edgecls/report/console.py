"""Terminal views (rich): targets, an artifact's manifest, top-k predictions."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from edgecls.targets import Target

console = Console()


def targets_table(targets: dict[str, Target]) -> None:
    table = Table(title="edgecls targets")
    for col in ("name", "arch", "cpu", "cores", "layout"):
        table.add_column(col, no_wrap=True)
    table.add_column("description", overflow="fold", ratio=1)
    for t in sorted(targets.values(), key=lambda t: t.name):
        table.add_row(t.name, t.arch, str(t.tvm.get("mcpu", "")), str(t.tvm.get("num-cores", "") or "all"),
                      t.layout, t.description)
    console.print(table)


def target_detail(t: Target) -> None:
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


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def inspect_view(m: dict, intact_problems: list[str]) -> None:
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
        ("preprocess", json.dumps(m.get("preprocess"))),
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
    console.print(head)
    files = Table(title="files")
    files.add_column("file")
    files.add_column("size", justify="right")
    files.add_column("sha256")
    total = 0
    for rel, info in m.get("files", {}).items():
        total += info["size"]
        files.add_row(rel, _size(info["size"]), info["sha256"][:16] + "…")
    files.add_row("[bold]total", _size(total), "")
    console.print(files)
    passes = Table(title="graph passes")
    passes.add_column("pass")
    passes.add_column("seconds", justify="right")
    passes.add_column("detail")
    for p in m.get("passes", []):
        passes.add_row(p["name"], f"{p['seconds']:.3f}", json.dumps(p.get("detail", "")) if p.get("detail") else "")
    console.print(passes)


def topk_view(report: dict) -> None:
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
