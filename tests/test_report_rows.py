"""Report rows that say what was measured (issue 20): two small models and an int8 QDQ made by ONNX
Runtime's quantize_static (not edgecls optimize), each compiled and benched with TVM and ONNX
Runtime -> six rows, labelled from the graph, with MACs, parameters and both sizes, one cores /
threads vocabulary, no empty figure; the same reports moved to a second board -> twelve rows; and
reports and manifests of earlier versions still load."""

from __future__ import annotations

import copy
import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import NET_MACS, NET_PARAMS, edgecls, quantize_static_ort, small_net_onnx
from test_report import CHROMIUM, _DomRows, chromium, page_errors

from edgecls.hashing import sha256_file
from edgecls.report.load import Row, find_baseline, load_reports, model_text, place_text, to_row


def _val_dir(d: Path, model: Path) -> Path:
    """32 random images labelled by the fp32 model itself: top-1 on device is then 1.0 for fp32."""
    from edgecls.artifact.reference import onnx_session
    x = np.random.default_rng(1).random((32, 3, 16, 16), np.float32)
    sess = onnx_session(model)
    y = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[i:i + 1]})[0] for i in range(32)]).argmax(1)
    d.mkdir()
    np.save(d / "val_x.npy", x)
    np.save(d / "val_y.npy", y.astype(np.int64))
    return d


@pytest.fixture(scope="module")
def six(tmp_path_factory) -> dict:
    """Three artifacts (net fp32, net int8 QDQ by ORT, a second model labelled --variant mine), each
    benched locally with TVM and ONNX Runtime."""
    d = tmp_path_factory.mktemp("six")
    net, other = small_net_onnx(d / "net.onnx"), small_net_onnx(d / "other.onnx", seed=1, width=4)
    int8 = quantize_static_ort(net, d / "net_int8.onnx")
    val = _val_dir(d / "val", net)
    # The images are labelled by `net`: the other model scores near chance on them, which #19's
    # preprocessing check would stop; here that is expected.
    for model, extra in ((net, ()), (int8, ()), (other, ("--variant", "mine", "--accept-low-accuracy"))):
        p = edgecls("compile", model, "--target", "x86-host", "--val-data", val, "-o", d / model.stem, *extra)
        assert p.returncode == 0, p.stderr
        p = edgecls("bench", d / model.stem, "--local", "--runtime", "tvm,onnxruntime", "--runs", "10",
                    "--warmup", "2", "-o", d / "reports")
        assert p.returncode == 0, p.stderr
    assert len(list((d / "reports").glob("*.json"))) == 6
    return {"dir": d, "reports": d / "reports", "sha": {m.stem: sha256_file(m) for m in (net, int8, other)}}


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_six_reports_give_six_labelled_rows(six, tmp_path):
    p = edgecls("report", six["reports"], "--csv", tmp_path / "r.csv", "--plot", tmp_path / "lat.png")
    assert p.returncode == 0, p.stderr
    rows = _csv(tmp_path / "r.csv")
    assert len(rows) == 6 and "dropped" not in p.stdout and "Traceback" not in p.stderr
    models = {f"{stem}@{sha[:8]}": stem for stem, sha in six["sha"].items()}
    want = {"net": "fp32", "net_int8": "int8-static-perchannel-s8", "other": "mine"}
    assert {(models[r["model"]], r["runtime"], r["variant"]) for r in rows} == \
        {(stem, rt, v) for stem, v in want.items() for rt in ("tvm", "onnxruntime")}
    by = {(models[r["model"]], r["runtime"]): r for r in rows}
    # fp32 and int8 of one network: the same MACs and weights, counted from each graph.
    assert by["net", "tvm"]["macs"] == by["net_int8", "onnxruntime"]["macs"] == str(NET_MACS)
    assert by["net", "tvm"]["params"] == by["net_int8", "tvm"]["params"] == str(NET_PARAMS)
    assert by["other", "tvm"]["macs"] == str(16 * 16 * 4 * 27 + 8 * 8 * 8 * 36 + 80)
    for r in rows:  # both sizes; the file a runtime loads is a part of the artifact
        assert 0 < int(r["model_bytes"]) < int(r["size_bytes"]), r
        # One vocabulary; without --threads every runtime got one thread per CPU of this machine.
        assert (r["threads"], r["cores"]) == (str(len(os.sched_getaffinity(0))), "all"), r
    assert int(by["net_int8", "onnxruntime"]["model_bytes"]) < int(by["net", "onnxruntime"]["model_bytes"])
    assert float(by["net", "tvm"]["top1"]) == pytest.approx(1.0)
    assert sorted(f.name for f in tmp_path.glob("lat*.png")) == ["lat-accuracy.png", "lat-runs.png", "lat.png"]
    manifest = json.loads((six["dir"] / "other" / "manifest.json").read_text())
    assert manifest["variant"] == "mine" and manifest["graph"]["variant"] == "fp32"
    assert manifest["options"]["variant"] == "mine" and manifest["model"]["name"] == "other"


def _moved(src: Path, dst: Path, board: str) -> Path:
    """The reports as if measured on another board (two boards, one folder of reports)."""
    dst.mkdir()
    for path in src.glob("*.json"):
        r = json.loads(path.read_text())
        r["board"] = {**r["board"], "name": board, "kind": "board", "host": f"{board}.lan"}
        (dst / f"{board}-{path.name}").write_text(json.dumps(r))
    return dst


def test_two_boards_and_a_baseline_naming_the_model(six, tmp_path):
    rk = _moved(six["reports"], tmp_path / "rk1", "rk1")
    net = f"net@{six['sha']['net'][:8]}"
    p = edgecls("report", six["reports"], rk, "--csv", tmp_path / "r.csv", "--baseline", f"{net}/rk1:tvm:fp32")
    assert p.returncode == 0, p.stderr
    rows = _csv(tmp_path / "r.csv")
    assert len(rows) == 12 and {r["board"] for r in rows} == {"local", "rk1"}
    base = next(r for r in rows if (r["board"], r["model"], r["runtime"], r["variant"]) == ("rk1", net, "tvm", "fp32"))
    assert float(base["median_ratio"]) == pytest.approx(1.0)
    p = edgecls("report", six["reports"], rk, "--baseline", "net/rk1:onnxruntime:fp32")
    assert p.returncode == 0, p.stderr  # the model's name alone will do


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (scripts/setup installs it)")
def test_six_rows_in_headless_chromium(six, tmp_path):
    html = tmp_path / "report.html"
    p = edgecls("report", six["reports"], "--html", html)
    assert p.returncode == 0, p.stderr
    assert html.read_text().count('src="data:image/png;base64,') == 3 and "left out" not in html.read_text()
    proc = chromium(html.as_uri() + "#selftest", tmp_path, "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = _DomRows()
    dom.feed(proc.stdout)
    assert dom.root_attrs.get("data-edgecls-selftest") == "ok", dom.root_attrs
    assert page_errors(proc, dom) == [] and len(dom.rows) == 6
    assert {r[4] for r in dom.rows} == {"fp32", "int8-static-perchannel-s8", "mine"}
    # Without top-1 the accuracy figure is left out, with one line in its place.
    bare = tmp_path / "bare"
    bare.mkdir()
    for path in six["reports"].glob("*.json"):
        r = json.loads(path.read_text())
        r["accuracy"] = None
        (bare / path.name).write_text(json.dumps(r))
    p = edgecls("report", bare, "--html", tmp_path / "bare.html")
    text = (tmp_path / "bare.html").read_text()
    assert p.returncode == 0 and text.count("data:image/png") == 2
    assert "accuracy figure left out: no report carries both top-1" in text


def test_reports_of_earlier_versions_still_load(six, tmp_path):
    """An old report: no model name, params, model size or variant facts; the Python harness gave
    no cores when unpinned and the runner its pool size: the same row text as today's."""
    new = json.loads(next(six["reports"].glob("*onnxruntime*")).read_text())
    old = copy.deepcopy(new)
    for k in ("model_name", "model_origin_sha256", "params", "model_bytes", "model_file", "variant_detected",
              "quantization"):
        old["artifact"].pop(k)
    old["cores"], old["threads"] = None, None
    old["options"]["threads"] = None  # before bench decided a default thread count
    del old["options"]["threads_how"]
    row, notes = to_row(old, tmp_path / "old.json")
    fresh, _ = to_row(new, tmp_path / "new.json")
    assert (row.model, row.variant, row.threads, row.cores) == (fresh.model, fresh.variant, "default", "all")
    assert row.params is None and row.model_bytes is None and row.macs == fresh.macs and notes == []
    tvm = {"threads": 2, "cores": [0, 1], "options": {"threads": None, "cores_resolved": None},
           "device": {"online_cpus": 2}}
    assert place_text(tvm) == place_text({"threads": None, "cores": None, "options": tvm["options"]}) == \
        ("default", "all")
    assert place_text({**tvm, "cores": [1]}) == ("default", "1")  # an inherited taskset mask
    assert place_text({**tvm, "options": {"threads": 1, "cores_resolved": [4, 5]}}) == ("1", "4-5")
    assert model_text({"model_source": "/m/resnet18.onnx", "model_sha256": "ab" * 32}) == "resnet18@abababab"


def test_old_manifest_still_makes_a_report(six):
    """A manifest from before graph facts: no graph section, no model name: MACs from the stages."""
    from edgecls.bench.harness import artifact_section
    art = six["dir"] / "net"
    manifest = json.loads((art / "manifest.json").read_text())
    manifest.pop("graph")
    for k in ("name", "origin_sha256"):
        manifest["model"].pop(k)
    manifest["stages"] = [{"stage": "original", "macs": 7, "params": 3}]
    section = artifact_section(art, manifest, "tvm")
    assert section["macs"] == 7 and section["params"] == 3 and section["model_name"] == "net"
    assert section["model_file"] == "model.so" and section["model_bytes"] > 0


def _row(model: str, board="rk1", runtime="tvm", variant="fp32") -> Row:
    return Row(board=board, target="rk3399", model=model, runtime=runtime, variant=variant, threads="default",
               cores="all")


def test_baseline_with_two_models_asks_for_the_model():
    from edgecls.errors import UsageError
    rows = [_row("resnet18@11112222"), _row("resnet50@33334444")]
    with pytest.raises(UsageError, match=r"matches 2 rows; add model/"):
        find_baseline(rows, "rk1:tvm:fp32")
    assert find_baseline(rows, "resnet50/rk1:tvm:fp32") is rows[1]
    assert find_baseline(rows, "1111/rk1:tvm:fp32") is rows[0]
    with pytest.raises(UsageError, match=r"matches no row \(rows: resnet18@11112222/rk1:tvm:fp32"):
        find_baseline(rows, "mobilenet/rk1:tvm:fp32")


def test_two_models_never_share_a_row(six, tmp_path):
    """The same board, runtime, variant, threads and cores, two model files: two rows, no note."""
    for path in six["reports"].glob("*-tvm-*.json"):
        r = json.loads(path.read_text())
        if r["artifact"]["name"] in ("net", "other"):
            r["artifact"]["variant"] = "fp32"
            (tmp_path / path.name).write_text(json.dumps(r))
    loaded = load_reports([tmp_path])
    assert [r.variant for r in loaded.rows] == ["fp32", "fp32"] and len({r.model for r in loaded.rows}) == 2
    assert not any("dropped" in n for n in loaded.notes)
