"""The benchmark-harness contract: the options every harness takes and the JSON it prints.

Three harnesses measure a model on a board and print one JSON object each: edgecls-runner (TVM,
C++, edgecls/artifact/runner/runner.cc), bench_py.py (ONNX Runtime, LiteRT) and bench_trt.py
(TensorRT). This file is their one definition of the option names and defaults, the timing
statistics, the report schema and its version, the TensorRT precisions and the error line.

Standard library only, on purpose: it is copied with bench_py.py and bench_trt.py into every
artifact's harness/ and imported there as a sibling file (`from contract import ...`) by the
board's own python3, where edgecls is not installed; on the workstation it is
edgecls.artifact.harness.contract. runner.cc cannot import it: tests/test_harness_contract.py and
tests/test_native_runner.py check its --help and its real JSON output against this file.
"""

from __future__ import annotations

import math
import statistics
import sys

SCHEMA_VERSION = 2  # of the JSON a harness prints (the edgecls bench report around it has its own)
HARNESS_NAMES = ("edgecls-runner", "bench_py", "bench_trt")
PRECISIONS = ("auto", "fp32", "fp16", "int8", "best")  # TensorRT engine precisions (bench --precision)

# The model and its input: every harness takes them, each with its own rule for a missing one.
INPUT_OPTIONS = ("--model", "--input")
# The options every harness takes, in --help order: name -> (type, default). edgecls-runner's
# --help states the same defaults; bench_trt.py times 50 runs by default (trtexec's statistics).
MEASURE_OPTIONS = {
    "--ref-input": (str, None), "--ref-output": (str, None), "--val-x": (str, None), "--val-y": (str, None),
    "--warmup": (int, 1), "--warmup-ms": (float, 0), "--runs": (int, 1), "--min-ms": (float, 0),
    "--cooldown-ms": (float, 0), "--threads": (int, None), "--cores": (str, None),
}
STAT_KEYS = ("mean", "median", "p90", "p95", "p99", "min", "max", "std")


def add_measure_options(parser, runs: int = 1) -> None:
    """MEASURE_OPTIONS on an argparse parser (runs: that harness' default number of timed runs)."""
    for name, (kind, default) in MEASURE_OPTIONS.items():
        parser.add_argument(name, type=kind, default=runs if name == "--runs" else default)


def harness_flags(**values) -> list[str]:
    """The workstation side: ref_input="x.npy" -> ["--ref-input", "x.npy"], in the order given;
    None is left out. A name no harness takes is a bug here, not on the board."""
    argv = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if flag not in INPUT_OPTIONS and flag not in MEASURE_OPTIONS:
            raise ValueError(f"{flag} is not an option of the benchmark harnesses")
        if value is not None:
            argv += [flag, str(value)]
    return argv


def fail(harness: str, msg: str) -> None:
    """The one error line every harness prints (`NAME: error: ...` on stderr, exit status 2)."""
    print(f"{harness}: error: {msg}", file=sys.stderr)
    sys.exit(2)


def error_message(line: str) -> str:
    """A harness' error line without its `NAME: error: ` prefix."""
    for name in HARNESS_NAMES:
        line = line.removeprefix(f"{name}: error: ")
    return line


# ---- statistics -----------------------------------------------------------------------------------

def percentile(sorted_vals, q):
    """numpy's default (linear) percentile of sorted values; runner.cc's Percentile() is the same."""
    k = (len(sorted_vals) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo)


def timing_stats(values) -> dict | None:
    """STAT_KEYS over the finite values (None when there are none): mean, median, linear
    percentiles, min, max and the population std, as runner.cc's Stats() computes them."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None
    s = sorted(vals)
    return {"mean": statistics.fmean(vals), "median": statistics.median(vals), "p90": percentile(s, 90),
            "p95": percentile(s, 95), "p99": percentile(s, 99), "min": s[0], "max": s[-1],
            "std": statistics.pstdev(vals)}


def fps_from_mean(mean_ms):
    """Runs per second from the mean run in ms (None for no runs)."""
    return 1000.0 / mean_ms if mean_ms else None


# ---- the report schema ----------------------------------------------------------------------------

class Nullable:
    def __init__(self, spec):
        self.spec = spec


class ListOf:
    def __init__(self, spec):
        self.spec = spec


class MapOf:
    """An object with any keys, each value of `spec` (cpus by id, thermal zones by name)."""

    def __init__(self, spec):
        self.spec = spec


NUM, OPT_NUM = (int, float), (int, float, type(None))
OPT_INT, OPT_STR, OPT_BOOL = (int, type(None)), (str, type(None)), (bool, type(None))
_SAMPLE = {"cpus": MapOf({"governor": OPT_STR, "cur_khz": OPT_INT, "max_khz": OPT_INT}),
           "thermal": MapOf(OPT_NUM), "loadavg_1m": OPT_NUM}
# What every harness prints, as far as edgecls reads it: key -> a tuple of types, a dict (an object
# with these keys), Nullable/ListOf/MapOf. "key?" may be absent. Extra keys are the harness' own.
REPORT_SCHEMA = {
    "schema": (int,), "runner": (str,), "model": (str,), "runtime_version?": (str,),
    "device": {"uname": Nullable({"sysname": (str,), "release": (str,), "machine": (str,)}),
               "cpu_model": OPT_STR, "online_cpus": OPT_INT, "mem_total_kb": OPT_INT, "glibc": OPT_STR},
    "cores": Nullable(ListOf((int,))), "threads": OPT_INT,
    "timings_ms": {"load": OPT_NUM, "warmup": ListOf(NUM), "runs": ListOf(NUM), **{k: OPT_NUM for k in STAT_KEYS}},
    "bench": {"fps": OPT_NUM, "runs": OPT_INT},
    "topk?": ListOf({"index": (int,), "score": NUM}),
    "reference?": Nullable({"max_abs_diff": OPT_NUM, "top1_match": OPT_BOOL}),
    "accuracy?": Nullable({"n": (int,), "top1": NUM, "top5": OPT_NUM}),
    "system": {"before": Nullable(_SAMPLE), "after": Nullable(_SAMPLE), "peak_rss_kb": OPT_INT,
               "throttled": OPT_BOOL},
}


def schema_problems(report) -> list[str]:
    """Where a harness' JSON breaks REPORT_SCHEMA or SCHEMA_VERSION; [] when it keeps both."""
    problems: list[str] = []
    _check(report, REPORT_SCHEMA, "report", problems)
    if isinstance(report, dict) and report.get("schema") != SCHEMA_VERSION:
        problems.append(f"report.schema: {report.get('schema')!r}, not {SCHEMA_VERSION}")
    return problems


def _check(value, spec, where: str, problems: list[str]) -> None:
    if isinstance(spec, Nullable):
        if value is not None:
            _check(value, spec.spec, where, problems)
    elif isinstance(spec, (dict, MapOf)):
        if not isinstance(value, dict):
            problems.append(f"{where}: {type(value).__name__}, not an object")
        elif isinstance(spec, MapOf):
            for key, item in value.items():
                _check(item, spec.spec, f"{where}.{key}", problems)
        else:
            for key, sub in spec.items():
                name = key.rstrip("?")
                if name in value:
                    _check(value[name], sub, f"{where}.{name}", problems)
                elif not key.endswith("?"):
                    problems.append(f"{where}.{name}: missing")
    elif isinstance(spec, ListOf):
        if not isinstance(value, list):
            problems.append(f"{where}: {type(value).__name__}, not a list")
        else:
            for i, item in enumerate(value):
                _check(item, spec.spec, f"{where}[{i}]", problems)
    elif not isinstance(value, spec) or (isinstance(value, bool) and bool not in spec):
        problems.append(f"{where}: {type(value).__name__}, not {' or '.join(t.__name__ for t in spec)}")
