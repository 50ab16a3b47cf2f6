"""`edgecls bench`: measure an artifact on boards (in parallel) or here; its live and summary views."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgecls.artifact.harness.contract import PRECISIONS
from edgecls.commands.options import accept_new_option, boards_option, mlflow_option, ssh_config_option
from edgecls.errors import EdgeclsError


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--board", "-b", "board_spec", default=None, help="Board name(s): b1,b2 or all.")
@click.option("--local", is_flag=True, help="Measure on this machine.")
@click.option("--emulate", is_flag=True, help="With --local: run a foreign-arch artifact under qemu.")
@click.option("--count", is_flag=True, help="With --local --emulate: count instructions per inference under qemu "
              "(the target's CPU model, one thread) instead of timing: deterministic emulated instructions, not time.")
@click.option("--cpu-model", default=None, metavar="QEMU_CPU",
              help="With --count: the qemu CPU model to count on (e.g. cortex-a53); default: the target's.")
@click.option("--profile", is_flag=True, help="With --local: time per kernel (name, calls, ms and share of an "
              "inference per kernel, most first) in TVM's Relax VM here; the report's `profile` lists every kernel.")
@click.option("--top", default=15, show_default=True, type=click.IntRange(1), help="With --profile: kernels shown.")
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
@click.option("--background-load", default=0, show_default=True, type=click.IntRange(0, 64), metavar="N",
              help="Run N busy processes on the board (or here) while each runtime is measured: latency on a "
              "busy board. Stopped after each runtime; reports show it as a variant (fp32-load1).")
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
def bench(artifact, board_spec, local, emulate, count, cpu_model, profile, top, runtime, precision, threads, cores,
          runs, warmup, warmup_ms, min_ms, cooldown_ms, background_load, parallel, batches, latency_budget, out_dir,
          inventory, ssh_config, accept_new_host_key,
          mlflow_uri):
    """Benchmark an artifact on boards (in parallel) or locally; one JSON report per board and runtime."""
    from rich.live import Live

    from edgecls import api
    from edgecls.commands.views import console
    if mlflow_uri:
        from edgecls.report.mlflow_log import require_mlflow
        require_mlflow()
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        results = api.bench_run(
            artifact, board=board_spec, local=local, emulate=emulate, runtime=runtime, threads=threads, cores=cores,
            runs=runs, warmup=warmup, warmup_ms=warmup_ms, min_ms=min_ms, cooldown_ms=cooldown_ms,
            batch_sizes=batches, latency_budget=latency_budget, count=count, cpu_model=cpu_model, profile=profile,
            precision=precision, out_dir=out_dir, parallel=parallel, inventory=inventory, ssh_config=ssh_config,
            accept_new_host_key=accept_new_host_key, on_change=lambda rs: live.update(fleet_table(rs)),
            background_load=background_load)
    bench_summary(results, top)
    if mlflow_uri:
        from edgecls.report.mlflow_log import log_bench
        runs_logged = log_bench(mlflow_uri, [p for r in results for p in r.reports])
        console.print(f"mlflow: {len(runs_logged)} run(s) logged to {mlflow_uri}")
    message = api.failure(results, out_dir)
    if message:
        raise EdgeclsError(message)


def bench_table(reports: list[dict]):
    from rich.table import Table

    from edgecls.commands.views import fmt
    table = Table(title="edgecls bench")
    for col in ("board", "runtime", "median ms", "p90", "p99", "fps", "top-1", "ref |diff|", "warnings"):
        table.add_column(col, justify="right" if col not in ("board", "runtime", "warnings") else "left")
    for r in reports:
        t = r.get("timings_ms") or {}
        acc = (r.get("accuracy") or {}).get("top1")
        ref = (r.get("reference") or {}).get("max_abs_diff")
        runtime = r["runtime"] + (f" b{r['batch']}" if r.get("batch", 1) != 1 else "")
        bench = r.get("bench") or {}
        table.add_row(r["board"]["name"], runtime, fmt(t.get("median")), fmt(t.get("p90")),
                      fmt(t.get("p99")), fmt(bench.get("images_per_s") or bench.get("fps"), ".1f"),
                      fmt(acc, ".3f"), fmt(ref, ".2e"), "; ".join(_measurement_warnings(r)))
    return table


def count_table(reports: list[dict], top: int = 5):
    """--count: instructions per inference and the kernels that execute most of them."""
    from rich.table import Table
    first = reports[0]["instructions"]
    table = Table(title=f"instructions per inference under qemu -cpu {first['cpu']}, {first['threads']} thread "
                        f"(emulated instructions, not time)")
    for col in ("artifact", "variant", "instructions", f"top {top} kernels (share)"):
        table.add_column(col, justify="right" if col == "instructions" else "left")
    for r in reports:
        ins = r["instructions"]
        variant = r["artifact"].get("variant", "fp32") + (f" b{r['batch']}" if r.get("batch", 1) != 1 else "")
        kernels = "\n".join(f"{k['name'].split(':', 1)[-1]} ({k['share']:.1%})" for k in ins["kernels"][:top])
        table.add_row(r["artifact"]["name"], variant, f"{ins['per_inference'] / 1e6:.1f} M", kernels)
    return table


def profile_table(report: dict, top: int):
    """--profile: the `top` kernels by time, then the kinds of kernel (conv2d, matmul, ...)."""
    from rich.table import Table
    prof = report["profile"]
    table = Table(title=f"time per kernel per inference: {report['artifact']['name']}, {report['threads']} "
                        f"thread(s); {prof['kernels_ms']:.3f} ms in calls (instrumented run "
                        f"{prof['instrumented_ms']:.3f} ms, plain run {prof['inference_ms']:.3f} ms)")
    for col in ("kernel", "kind", "calls", "ms", "% of inference"):
        table.add_column(col, justify="left" if col in ("kernel", "kind") else "right")
    for k in prof["kernels"][:top]:
        table.add_row(k["name"], k["kind"], str(k["calls"]), f"{k['total_ms']:.3f}", f"{k['share']:.1%}")
    rest = prof["kernels"][top:]
    if rest:
        table.add_row(f"({len(rest)} more)", "", str(sum(k["calls"] for k in rest)),
                      f"{sum(k['total_ms'] for k in rest):.3f}", f"{sum(k['share'] for k in rest):.1%}")
    table.add_section()
    for k in prof["kinds"]:
        table.add_row(f"all {k['kind']}", k["kind"], str(k["calls"]), f"{k['total_ms']:.3f}", f"{k['share']:.1%}")
    return table


def _measurement_warnings(r: dict) -> list[str]:
    """Why a report's times may not be the board's real speed."""
    system = r.get("system") or {}
    warn = []
    if system.get("throttled"):
        warn.append("throttled")
    governors = {c.get("governor") for c in ((system.get("before") or {}).get("cpus") or {}).values()}
    if governors - {None, "performance"}:
        warn.append("governor " + ",".join(sorted(g for g in governors if g)))
    if r["board"].get("kind") == "emulated" or r["board"].get("emulator"):
        warn.append("emulated: time is not board time")
    return warn


def fleet_table(results):
    from rich.table import Table
    table = Table(title="boards")
    for col in ("board", "status", "median ms", "detail"):
        table.add_column(col)
    style = {"done": "green", "failed": "red", "queued": "dim"}
    for r in results:
        med = ", ".join(f"{k} {v:.2f}" for k, v in r.medians.items()) if r.medians else ""
        table.add_row(r.name, f"[{style.get(r.status, 'yellow')}]{r.status}", med, r.detail[:90])
    return table


def bench_summary(results, top: int = 15) -> int:
    """Print every report written and the per-runtime table; returns how many places failed."""
    from edgecls.commands.views import console
    reports = [json.loads(p.read_text()) for r in results for p in r.reports]
    timed = [r for r in reports if not r.get("instructions") and not r.get("profile")]
    counted = [r for r in reports if r.get("instructions")]
    if timed:
        console.print(bench_table(timed))
    if counted:
        console.print(count_table(counted))
    for r in reports:
        if r.get("profile"):
            console.print(profile_table(r, top))
    for line in _threads_lines(timed):
        console.print(line, highlight=False)
    for line in _runtime_choice_lines(reports):
        console.print(line)
    for line in _batch_recommendation_lines(reports):
        console.print(line)
    for r in results:
        for p in r.reports:
            console.print(f"report: {p}")
        if r.status == "failed":
            console.print(f"[red]failed[/red] {r.name}: {r.detail}")
    return sum(r.status == "failed" for r in results)


def _first_per_place(reports: list[dict], key: str) -> list[tuple[str, dict]]:
    """(place name, reports' `key` section) for the first report of each place that has one."""
    seen: dict[str, dict] = {}
    for rep in reports:
        if rep.get(key) and rep["board"]["name"] not in seen:
            seen[rep["board"]["name"]] = rep[key]
    return list(seen.items())


def _threads_lines(reports: list[dict]) -> list[str]:
    """How many threads each place ran and why (a default is the target's big cluster or every CPU)."""
    lines = {}
    for r in reports:
        opts = r.get("options") or {}
        if opts.get("threads_how") and r["board"]["name"] not in lines:
            lines[r["board"]["name"]] = f"{r['board']['name']}: {opts['threads']} thread(s), {opts['threads_how']}" \
                + ("" if opts["threads_how"].startswith("given") else "; --threads N overrides") \
                + (f"; {opts['background_load']} busy process(es) beside each runtime, stopped after it"
                   if opts.get("background_load") else "")
    return list(lines.values())


def _runtime_choice_lines(reports: list[dict]) -> list[str]:
    """--runtime auto: the winner per place."""
    lines = []
    for name, choice in _first_per_place(reports, "runtime_choice"):
        vs = f" ({choice['speedup_vs_tvm']:.2f}x TVM's speed)" if choice.get("speedup_vs_tvm") else ""
        lines.append(f"{name}: fastest runtime {choice['winner']}{vs}; make it the "
                     f"default with `compile --backend auto --from-report <these reports>`")
    return lines


def _batch_recommendation_lines(reports: list[dict]) -> list[str]:
    """--batch: one recommendation per place."""
    from edgecls.commands.views import fmt
    lines = []
    for name, rec in _first_per_place(reports, "batch_recommendation"):
        budget = f" within {rec['latency_budget_ms']} ms" if rec.get("latency_budget_ms") else ""
        lines.append(f"{name}: recommended batch {rec['batch']}{budget}: "
                     f"{fmt(rec.get('images_per_s'), '.1f')} images/s at {fmt(rec.get('median_ms'))} ms"
                     if rec.get("batch") else f"{name}: {rec.get('reason')}")
    return lines
