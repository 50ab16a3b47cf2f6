"""Terminal views (rich): targets, an artifact's manifest, top-k predictions."""

from __future__ import annotations

import json
from pathlib import Path

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


def _fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def bench_table(reports: list[dict], paths: list | None = None) -> Table:
    table = Table(title="edgecls bench")
    for col in ("board", "runtime", "median ms", "p90", "p99", "fps", "top-1", "ref |diff|", "warnings"):
        table.add_column(col, justify="right" if col not in ("board", "runtime", "warnings") else "left")
    for r in reports:
        t = r.get("timings_ms") or {}
        acc = (r.get("accuracy") or {}).get("top1")
        ref = (r.get("reference") or {}).get("max_abs_diff")
        system = r.get("system") or {}
        warn = []
        if system.get("throttled"):
            warn.append("throttled")
        governors = {c.get("governor") for c in ((system.get("before") or {}).get("cpus") or {}).values()}
        if governors - {None, "performance"}:
            warn.append("governor " + ",".join(sorted(g for g in governors if g)))
        if r["board"].get("kind") == "emulated" or r["board"].get("emulator"):
            warn.append("emulated: time is not board time")
        runtime = r["runtime"] + (f" b{r['batch']}" if r.get("batch", 1) != 1 else "")
        bench = r.get("bench") or {}
        table.add_row(r["board"]["name"], runtime, _fmt(t.get("median")), _fmt(t.get("p90")),
                      _fmt(t.get("p99")), _fmt(bench.get("images_per_s") or bench.get("fps"), ".1f"),
                      _fmt(acc, ".3f"), _fmt(ref, ".2e"), "; ".join(warn))
    return table


def fleet_table(results) -> Table:
    table = Table(title="boards")
    for col in ("board", "status", "median ms", "detail"):
        table.add_column(col)
    style = {"done": "green", "failed": "red", "queued": "dim"}
    for r in results:
        med = ", ".join(f"{k} {v:.2f}" for k, v in r.medians.items()) if r.medians else ""
        table.add_row(r.name, f"[{style.get(r.status, 'yellow')}]{r.status}", med, r.detail[:90])
    return table


def boards_table(boards: dict, reachable: dict) -> Table:
    table = Table(title="boards")
    for col in ("name", "target", "host", "workdir", "reachable", "last seen"):
        table.add_column(col)
    for b in sorted(boards.values(), key=lambda b: b.name):
        r = reachable.get(b.name)
        state = "-" if r is None else ("[green]yes" if r is True else f"[red]no[/red] {r}")
        table.add_row(b.name, b.target, b.host, b.workdir, state, b.last_seen or "never")
    return table


def board_check_view(board, info: dict) -> None:
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


def bench_summary(results) -> int:
    """Print every report written and the per-runtime table; returns how many places failed."""
    import json as _json
    reports = []
    for r in results:
        for p in r.reports:
            reports.append(_json.loads(p.read_text()))
    if reports:
        console.print(bench_table(reports))
    chosen = set()
    for rep in reports:  # --runtime auto: the winner per place
        choice = rep.get("runtime_choice")
        if choice and rep["board"]["name"] not in chosen:
            chosen.add(rep["board"]["name"])
            vs = f" ({choice['speedup_vs_tvm']:.2f}x TVM's speed)" if choice.get("speedup_vs_tvm") else ""
            console.print(f"{rep['board']['name']}: fastest runtime {choice['winner']}{vs}; make it the "
                          f"default with `compile --backend auto --from-report <these reports>`")
    seen = set()
    for rep in reports:  # --batch: one recommendation per place
        rec = rep.get("batch_recommendation")
        if rec and rep["board"]["name"] not in seen:
            seen.add(rep["board"]["name"])
            budget = f" within {rec['latency_budget_ms']} ms" if rec.get("latency_budget_ms") else ""
            console.print(f"{rep['board']['name']}: recommended batch {rec['batch']}{budget}: "
                          f"{_fmt(rec.get('images_per_s'), '.1f')} images/s at {_fmt(rec.get('median_ms'))} ms"
                          if rec.get("batch") else f"{rep['board']['name']}: {rec.get('reason')}")
    for r in results:
        for p in r.reports:
            console.print(f"report: {p}")
        if r.status == "failed":
            console.print(f"[red]failed[/red] {r.name}: {r.detail}")
    return sum(r.status == "failed" for r in results)


def stages_table(stages: list[dict]) -> Table:
    """Accuracy, size and MACs after every optimization stage."""
    table = Table(title="accuracy at every stage")
    for col in ("stage", "top-1", "top-5", "params", "MACs", "size", "note"):
        table.add_column(col, justify="left" if col in ("stage", "note") else "right")
    for st in stages:
        note = st.get("method") or st.get("how") or (f"ratio {st['ratio']}" if "ratio" in st else "")
        table.add_row(st["stage"], _fmt(st.get("top1"), ".4f"), _fmt(st.get("top5"), ".4f"),
                      f"{st['params']:,}" if st.get("params") else "-", f"{st['macs']:,}" if st.get("macs") else "-",
                      _size(st["size_bytes"]) if st.get("size_bytes") else "-", note)
    return table


def tuning_table(summary: dict) -> Table:
    """Per kernel of `edgecls tune`: zero-trial vs best measured latency."""
    table = Table(title=f"tuning {Path(summary['model']).name} for {summary['target']} ({summary['where']})")
    for col in ("kernel", "measured", "zero-trial ms", "best ms", "speed-up", "GFLOPS"):
        table.add_column(col, justify="left" if col == "kernel" else "right")
    for t in summary["tasks"]:
        zt, best = t.get("zero_trial_ms"), t.get("best_ms")
        table.add_row(t["name"][:48], f"{t['measured']}/{t['measured_total']}", _fmt(zt, ".4f"), _fmt(best, ".4f"),
                      f"{zt / best:.2f}x" if zt and best else "-", _fmt(t.get("gflops"), ".1f"))
    return table
