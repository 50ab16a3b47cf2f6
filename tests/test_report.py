"""`edgecls report`: real bench reports of a tiny artifact plus hand-edited ones (a board with
throttling, an older schema, a duplicate from another build, broken files) -> table, CSV,
Markdown, PNG plots, and an HTML page checked in a real headless Chromium."""

from __future__ import annotations

import copy
import csv
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import edgecls

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"




def tiny_model(d: Path) -> tuple[Path, Path]:
    """A 64 -> 10 linear classifier on 1x8x8 inputs and 16 labelled validation samples."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    w, b = (rng.standard_normal((64, 10)) * 0.1).astype(np.float32), np.zeros(10, np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["f"], axis=1), helper.make_node("MatMul", ["f", "W"], ["m"]),
         helper.make_node("Add", ["m", "B"], ["logits"])], "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, d / "tiny.onnx")
    x = rng.standard_normal((16, 1, 8, 8)).astype(np.float32)
    y = (x.reshape(16, -1) @ w + b).argmax(1).astype(np.int64)
    y[:3] = (y[:3] + 1) % 10  # 13/16 right: a top-1 that is not trivially 1.0
    (d / "val").mkdir()
    np.save(d / "val" / "val_x.npy", x)
    np.save(d / "val" / "val_y.npy", y)
    return d / "tiny.onnx", d / "val"


def cpus(ids, max_khz, cur_ratio=1.0, governor="performance"):
    return {str(c): {"governor": governor, "cur_khz": int(max_khz[c] * cur_ratio), "max_khz": max_khz[c],
                     "cpuinfo_max_khz": max_khz[c], "scaling_max_khz": max_khz[c]} for c in ids}


RK3399_KHZ = {0: 1416000, 1: 1416000, 2: 1416000, 3: 1416000, 4: 1800000, 5: 1800000}


def board_report(real: dict, *, variant="fp32", runtime="tvm", scale=10.0, top1=0.8125, cores=(4, 5),
                 threads=2, created="2026-01-02T10:00:00+00:00", artifact_id="a" * 64, **system) -> dict:
    """A real local report moved to an RK3399 board named rk1 (run with --threads and --cores):
    timings scaled, system facts set."""
    r = copy.deepcopy(real)
    r["board"] = {"name": "rk1", "kind": "board", "host": "rk1.lan", "target": "rk3399", "emulator": []}
    r["runtime"], r["created"], r["threads"], r["cores"] = runtime, created, threads, list(cores)
    r["options"].update(threads=threads, cores_resolved=list(cores))
    r["device"] = {**(r.get("device") or {}), "online_cpus": 6}
    r["artifact"].update(target="rk3399", variant=variant, id=artifact_id, macs=640, name=f"tiny-rk3399-{variant}")
    t = r["timings_ms"]
    for k in ("median", "p90", "p95", "p99", "min", "max", "mean"):
        t[k] *= scale
    t["runs"] = [v * scale for v in t["runs"]]
    t["p90"] = min(t["p90"], t["median"] * 1.5)  # a quiet board, unlike this shared CI box
    r["bench"]["fps"] = 1000.0 / t["mean"]
    r["accuracy"]["top1"] = top1
    sample = {"cpus": cpus(cores, RK3399_KHZ, system.get("cur_ratio", 1.0), system.get("governor", "performance")),
              "thermal": {"soc-thermal": system.get("temp", 45.0)}, "loadavg_1m": 0.1}
    r["system"] = {"before": sample, "after": sample, "peak_rss_kb": 20000,
                   "throttled": system.get("cur_ratio", 1.0) < 0.95}
    return r


@pytest.fixture(scope="module")
def real_reports(tmp_path_factory) -> dict[str, dict]:
    """The real thing: compile a tiny artifact for this machine and bench it with TVM and ONNX Runtime."""
    d = tmp_path_factory.mktemp("report-bench")
    model, val = tiny_model(d)
    p = edgecls("compile", model, "--target", "x86-host", "--val-data", val, "-o", d / "art")
    assert p.returncode == 0, p.stderr
    p = edgecls("bench", d / "art", "--local", "--runtime", "tvm,onnxruntime", "--runs", "20", "--warmup", "2",
                "-o", d / "reports")
    assert p.returncode == 0, p.stderr
    reports = {}
    for path in sorted((d / "reports").glob("*.json")):
        r = json.loads(path.read_text())
        reports[r["runtime"]] = r
    assert set(reports) == {"tvm", "onnxruntime"}
    return reports


@pytest.fixture(scope="module")
def report_dir(real_reports, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("reports")
    tvm, ort = real_reports["tvm"], real_reports["onnxruntime"]
    (d / "local-tvm.json").write_text(json.dumps(tvm))
    (d / "local-ort.json").write_text(json.dumps(ort))
    fp32 = board_report(tvm)
    (d / "rk1-tvm-fp32.json").write_text(json.dumps(fp32))
    # The same row measured earlier from another build of the artifact: dropped, with a note.
    (d / "rk1-tvm-fp32-older.json").write_text(json.dumps(
        board_report(tvm, scale=30.0, created="2025-12-01T09:00:00+00:00", artifact_id="b" * 64)))
    # int8 on all six cores of a hot, throttled board with an on-demand governor.
    (d / "rk1-tvm-int8.json").write_text(json.dumps(
        board_report(tvm, variant="int8", scale=4.0, top1=0.75, cores=range(6), threads=6,
                     cur_ratio=0.6, governor="schedutil", temp=86.0)))
    # An older schema: no system facts, no accuracy, no per-run timings, no fps.
    old = board_report(ort, runtime="onnxruntime", scale=12.0, cores=(4, 5))
    old["schema"] = 0
    for k in ("system", "accuracy", "bench", "options", "threads"):
        old.pop(k)
    old["timings_ms"] = {k: old["timings_ms"][k] for k in ("median", "p90", "p99")}
    for k in ("size_bytes", "macs", "top1_compiled"):
        old["artifact"].pop(k)
    (d / "rk1-ort-old.json").write_text(json.dumps(old))
    (d / "corrupt.json").write_text(json.dumps(fp32)[:300])
    (d / "not-a-report.json").write_text(json.dumps({"kind": "edgecls-artifact-manifest", "schema": 1}))
    return d


EXPECTED = {  # row key -> what the table must say about it
    ("local", "x86-host", "tvm", "fp32"): [],
    ("local", "x86-host", "onnxruntime", "fp32"): [],
    ("rk1", "rk3399", "tvm", "fp32"): [],
    ("rk1", "rk3399", "tvm", "int8"): ["throttled", "governor schedutil", "big/little mix", "hot (86 C)"],
    ("rk1", "rk3399", "onnxruntime", "fp32"): ["no system facts"],
}


def model_of(report: dict) -> str:
    """The report table's model column: the file's stem and the start of its sha256."""
    return f"tiny@{report['artifact']['model_sha256'][:8]}"


def read_csv(path: Path) -> dict[tuple, dict]:
    with open(path, newline="") as f:
        return {(r["board"], r["target"], r["runtime"], r["variant"]): r for r in csv.DictReader(f)}


def test_table_csv_markdown_baseline_and_warnings(report_dir, real_reports, tmp_path):
    out = tmp_path / "out"
    model = model_of(real_reports["tvm"])
    p = edgecls("report", *sorted(report_dir.glob("*.json")), "--csv", out / "r.csv", "--md", out / "r.md",
                "--baseline", "rk1:tvm:fp32")
    assert p.returncode == 0, p.stderr
    # Broken files: named, skipped, not fatal.
    assert "corrupt.json" in p.stderr and "not-a-report.json" in p.stderr and "skipped" in p.stderr
    assert "Traceback" not in p.stderr + p.stdout
    rows = read_csv(out / "r.csv")
    assert set(rows) == set(EXPECTED)
    for key, flags in EXPECTED.items():
        for flag in flags:
            assert flag in rows[key]["warnings"], (key, rows[key]["warnings"])
    # The board's clean fp32 row has no flags; the local rows may be 'noisy' on a shared machine.
    assert rows[("rk1", "rk3399", "tvm", "fp32")]["warnings"] == ""
    base, int8 = rows[("rk1", "rk3399", "tvm", "fp32")], rows[("rk1", "rk3399", "tvm", "int8")]
    assert float(base["median_ratio"]) == pytest.approx(1.0) and float(base["fps_ratio"]) == pytest.approx(1.0)
    assert float(int8["median_ratio"]) == pytest.approx(float(int8["median_ms"]) / float(base["median_ms"]))
    assert float(int8["median_ratio"]) == pytest.approx(0.4, rel=1e-6)  # scaled 4x vs 10x in board_report
    assert float(int8["fps_ratio"]) == pytest.approx(2.5, rel=1e-6)
    assert float(int8["top1_delta"]) == pytest.approx(0.75 - 0.8125)
    assert int8["threads"] == "6" and int8["cores"] == "0-5" and base["cores"] == "4-5"
    assert base["macs"] == "640" and int(base["size_bytes"]) > 0 and base["model"] == model
    # One vocabulary: the same defaults read the same whichever runner measured; without --threads
    # both got one thread per CPU of this machine (x86-host declares no cluster).
    tvm, ort = rows[("local", "x86-host", "tvm", "fp32")], rows[("local", "x86-host", "onnxruntime", "fp32")]
    assert (tvm["threads"], tvm["cores"]) == (ort["threads"], ort["cores"]) == (str(len(os.sched_getaffinity(0))), "all")
    # Graph facts from compile: the tiny model's 64x10 MatMul and its 650 weights; two sizes.
    assert tvm["macs"] == ort["macs"] == "640" and tvm["params"] == ort["params"] == "650"
    assert 0 < int(ort["model_bytes"]) < int(tvm["model_bytes"]) < int(tvm["size_bytes"])
    # The newest of two reports for one row is kept, the other named in a note.
    assert base["report"].endswith("rk1-tvm-fp32.json")
    assert "rk1-tvm-fp32-older.json" in p.stdout and "different artifact" in p.stdout
    old = rows[("rk1", "rk3399", "onnxruntime", "fp32")]
    assert old["schema"] == "0" and old["runs"] == "0" and old["top1"] == "" and float(old["median_ms"]) > 0
    assert "schema 0" in p.stdout
    # The real local rows carry the measured values.
    local = rows[("local", "x86-host", "tvm", "fp32")]
    assert int(local["runs"]) >= 20 and float(local["top1"]) == pytest.approx(13 / 16)
    md = (out / "r.md").read_text()
    table = [ln for ln in md.splitlines() if ln.startswith("| ") and "---" not in ln]
    assert len(table) == 1 + len(EXPECTED)  # header + one line per row
    for board, target, runtime, variant in EXPECTED:
        assert any(f"| {board} | {target} | {model} | {runtime} | {variant} |" in ln for ln in table)
    assert f"Baseline: `{model}/rk1:tvm:fp32" in md and "| 0.40 |" in md and "corrupt.json" in md
    # The terminal table names every row and numbers the flagged ones.
    for board, target, runtime, variant in EXPECTED:
        assert f"{board} ({target})" in p.stdout and f"{runtime} {variant}" in p.stdout
    assert "rk1:tvm:int8" in p.stdout and "throttled" in p.stdout
    assert not list(out.glob("*.partial")) and not list(out.glob(".*"))


def test_plots_are_real_pngs(report_dir, tmp_path):
    """Three figures with something to show each; one without (no top-1) is left out, with a note."""
    from PIL import Image
    p = edgecls("report", report_dir, "--plot", tmp_path / "plots" / "latency.png")
    assert p.returncode == 0, p.stderr
    names = ["latency.png", "latency-accuracy.png", "latency-runs.png"]
    assert sorted(f.name for f in (tmp_path / "plots").iterdir()) == sorted(names)
    for name in names:
        path = tmp_path / "plots" / name
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 10_000, name
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            assert 600 <= img.width <= 4000 and 400 <= img.height <= 2000, (name, img.size)
            lo, hi = img.convert("L").getextrema()
            assert hi - lo > 100, name  # something was drawn
    no_top1 = tmp_path / "no-top1"
    no_top1.mkdir()
    for path in report_dir.glob("local-*.json"):
        r = json.loads(path.read_text())
        r["accuracy"] = None
        (no_top1 / path.name).write_text(json.dumps(r))
    p = edgecls("report", no_top1, "--plot", tmp_path / "p2" / "lat.png")
    assert p.returncode == 0, p.stderr
    assert sorted(f.name for f in (tmp_path / "p2").iterdir()) == ["lat-runs.png", "lat.png"]
    assert "lat-accuracy.png not written: no report carries both top-1" in p.stdout


def test_pareto_front():
    from edgecls.report.plots import pareto_front
    pts = [(1.0, 0.90, "fast"), (2.0, 0.95, "accurate"), (3.0, 0.93, "dominated"), (1.0, 0.85, "slow-ish")]
    assert pareto_front(pts) == ["fast", "accurate"]


def test_no_valid_reports_is_one_line_error(report_dir, tmp_path):
    p = edgecls("report", report_dir / "corrupt.json", report_dir / "not-a-report.json", tmp_path / "missing.json")
    assert p.returncode == 1
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert errors == ["error: no valid edgecls bench report among the 3 file(s) given"], p.stderr
    assert "corrupt.json" in p.stderr and "missing.json" in p.stderr and "Traceback" not in p.stderr
    p = edgecls("report", report_dir, "--baseline", "rk9:tvm:fp32")
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert p.returncode == 2 and len(errors) == 1, p.stderr
    assert errors[0].startswith("error: --baseline rk9:tvm:fp32 matches no row (rows: local:onnxruntime:fp32,")


class _DomRows(HTMLParser):
    def __init__(self):
        super().__init__()
        self.root_attrs, self.rows, self._in_body, self._row = {}, [], False, None

    def handle_starttag(self, tag, attrs):
        if tag == "html":
            self.root_attrs = dict(attrs)
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._row.append("")

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body = False
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._row:
            self._row[-1] += data


def chromium(url: str, tmp_path: Path, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0", *extra, url],
        capture_output=True, text=True, timeout=120)


def page_errors(proc: subprocess.CompletedProcess, dom: _DomRows | None) -> list[str]:
    """JS errors: console messages in chromium's log, and those the page's onerror recorded."""
    found = [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]
    if dom is not None and dom.root_attrs.get("data-edgecls-errors"):
        found.append(dom.root_attrs["data-edgecls-errors"])
    return found


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (scripts/setup installs it)")
def test_html_page_in_headless_chromium(report_dir, tmp_path):
    html_path = tmp_path / "site" / "report.html"
    p = edgecls("report", report_dir, "--html", html_path, "--baseline", "rk1:tvm:fp32")
    assert p.returncode == 0, p.stderr
    text = html_path.read_text()
    # Self-contained: nothing fetched from anywhere, the plots inline.
    assert "<script src" not in text and "<link" not in text and "http://" not in text and "https://" not in text
    assert text.count('src="data:image/png;base64,') == 3

    proc = chromium(html_path.as_uri() + "#selftest", tmp_path, "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = _DomRows()
    dom.feed(proc.stdout)
    assert dom.root_attrs.get("data-edgecls-ready") == "1", proc.stdout[:500]
    assert dom.root_attrs.get("data-edgecls-selftest") == "ok", dom.root_attrs
    assert page_errors(proc, dom) == []
    assert len(dom.rows) == len(EXPECTED)
    assert {(r[0], r[1], r[3], r[4]) for r in dom.rows} == {(b, t, rt, v) for b, t, rt, v in EXPECTED}
    assert {r[2] for r in dom.rows} == {model_of(json.loads((report_dir / "local-tvm.json").read_text()))}
    int8 = next(r for r in dom.rows if r[4] == "int8")
    assert "throttled" in int8[-1] and "big/little mix" in int8[-1]

    shot = tmp_path / "shot.png"
    proc = chromium(html_path.as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=1400,1800",
                    "--hide-scrollbars")
    assert proc.returncode == 0 and page_errors(proc, None) == [], proc.stderr[-2000:]
    assert shot.read_bytes()[:8] == PNG_MAGIC and shot.stat().st_size > 20_000
    keep = Path(__import__("os").environ.get("EDGECLS_REPORT_SCREENSHOT", ""))
    if keep.name:  # look at it: EDGECLS_REPORT_SCREENSHOT=/tmp/report.png pytest tests/test_report.py
        shutil.copy(shot, keep)

    # The error check itself works: chromium's log shows an uncaught error of a page that throws.
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><script>undefinedFunction();</script></body></html>")
    proc = chromium(bad.as_uri(), tmp_path, "--dump-dom")
    assert any("undefinedFunction" in e for e in page_errors(proc, None)), proc.stderr[-2000:]


def test_missing_mlflow_is_one_line(monkeypatch, tmp_path):
    from edgecls.errors import EdgeclsError
    from edgecls.report.mlflow_log import log_run
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    with pytest.raises(EdgeclsError, match=r"pip install 'edgecls\[mlflow\]'"):
        log_run(tmp_path.as_uri(), "x", {}, {}, [])


def test_mlflow_file_store(report_dir, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    from edgecls.report.build import ReportRequest, build_report
    uri = (tmp_path / "mlruns").as_uri()
    result = build_report(ReportRequest(paths=[report_dir], csv=tmp_path / "r.csv", mlflow=uri,
                                        baseline="rk1:tvm:fp32"))
    assert len(result.mlflow_runs) == len(EXPECTED) + 1
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("edgecls")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    rows = [r for r in runs if r.data.tags.get("edgecls.kind") == "bench-row"]
    assert len(rows) == len(EXPECTED) and all(r.info.status == "FINISHED" for r in runs)
    int8 = next(r for r in rows if r.data.params["variant"] == "int8")
    assert int8.data.params["board"] == "rk1" and "throttled" in int8.data.params["warnings"]
    assert int8.data.metrics["median_vs_baseline"] == pytest.approx(0.4, rel=1e-6)
    assert [a.path for a in client.list_artifacts(int8.info.run_id)] == ["rk1-tvm-int8.json"]
    summary = next(r for r in runs if r.data.tags.get("edgecls.kind") == "report")
    assert [a.path for a in client.list_artifacts(summary.info.run_id)] == ["r.csv"]


def test_odd_field_types_never_crash(real_reports, tmp_path):
    """Any top-level or nested field of any JSON type: a row (maybe full of '-'), never a traceback."""
    from edgecls.report.load import to_row
    from edgecls.report.table import cell_text, display_columns
    base = real_reports["tvm"]
    odd = [None, "x", 5, -1.5, True, [], [1, "a"], {}, {"a": None}]
    paths = [[k] for k in base] + [["artifact", k] for k in base["artifact"]] + \
        [["timings_ms", k] for k in base["timings_ms"]] + [["system", "before"], ["system", "throttled"]] + \
        [["system", "before", "cpus"], ["system", "after", "thermal"]]
    for path in paths:
        for value in odd:
            r = copy.deepcopy(base)
            node = r
            for k in path[:-1]:
                node = node[k]
            node[path[-1]] = value
            row, _ = to_row(r, tmp_path / "r.json")
            for col in display_columns(True):
                assert isinstance(cell_text(row, col), str), (path, value, col)


def test_mlflow_logs_compile_and_bench_runs(tmp_path):
    """`compile --mlflow` and `bench --mlflow`: one run each (manifest / report attached)."""
    import subprocess

    mlflow = pytest.importorskip("mlflow")
    model, _ = tiny_model(tmp_path)
    exe, uri = str(Path(sys.executable).parent / "edgecls"), (tmp_path / "mlruns").as_uri()
    p = subprocess.run([exe, "compile", str(model), "--target", "x86-host",
                        "--mlflow", uri, "-o", str(tmp_path / "art")], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([exe, "bench", str(tmp_path / "art"), "--local", "--runs", "3", "--runtime", "tvm,onnxruntime",
                        "--mlflow", uri, "-o", str(tmp_path / "r")], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    kinds = sorted(r.data.tags.get("edgecls.kind") for r in runs)
    assert kinds == ["bench", "bench", "compile"]
    bench = [r for r in runs if r.data.tags.get("edgecls.kind") == "bench"]
    assert all(r.data.metrics["median_ms"] > 0 for r in bench)
    assert {r.data.params["runtime"] for r in bench} == {"tvm", "onnxruntime"}
