"""`bench --runtime auto` records the fastest runtime; `compile --backend auto` makes it the default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import edgecls


def _reports(d: Path) -> list[dict]:
    return [json.loads(f.read_text()) for f in sorted(d.glob("*.json"))]


@pytest.mark.slow
def test_auto_runtime_choice_becomes_the_artifacts_backend(demo, tmp_path):
    art = tmp_path / "art"
    assert edgecls("compile", demo.pt2, "--target", "x86-host", "--val-data", demo.dir, "-o", art).returncode == 0
    shipped = json.loads((art / "manifest.json").read_text())["runtimes_shipped"]
    p = edgecls("bench", art, "--local", "--runtime", "auto", "--runs", "10", "-o", tmp_path / "r")
    assert p.returncode == 0, p.stderr
    reports = _reports(tmp_path / "r")
    assert sorted(r["runtime"] for r in reports) == sorted(shipped)  # every CPU runtime it carries
    medians = {r["runtime"]: r["timings_ms"]["median"] for r in reports}
    winner = min(medians, key=medians.get)
    assert all(r["runtime_choice"]["winner"] == winner for r in reports)
    assert f"fastest runtime {winner}" in p.stdout
    art2 = tmp_path / "art2"
    p = edgecls("compile", demo.pt2, "--target", "x86-host", "--backend", "auto", "--from-report", tmp_path / "r",
                "-o", art2)
    assert p.returncode == 0, p.stderr
    backend = json.loads((art2 / "manifest.json").read_text())["backend"]
    assert backend["runtime"] == winner and backend["boards"] == ["local"]
    p = edgecls("bench", art2, "--local", "--runs", "3", "-o", tmp_path / "r2")  # no --runtime: the backend
    assert p.returncode == 0, p.stderr
    assert [r["runtime"] for r in _reports(tmp_path / "r2")] == [winner]
    # Reports of another target decide nothing: one line, before any compile work.
    p = edgecls("compile", demo.onnx, "--target", "rk3399", "--backend", "auto", "--from-report", tmp_path / "r",
                "-o", tmp_path / "art3")
    assert p.returncode != 0 and "no `bench --runtime auto` report for target rk3399" in p.stderr, p.stderr
    assert not (tmp_path / "art3").exists()
