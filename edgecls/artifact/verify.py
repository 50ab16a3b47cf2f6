"""Checks of a built artifact by its own runner: numerics against ONNX Runtime, top-1 on the full
validation split (the same images every other stage is measured on), and the --max-accuracy-drop
gate (edgecls.artifact.gate) on the per-image results of the original and the artifact."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecls.artifact.batches import verify_batches
from edgecls.artifact.execute import run_runner
from edgecls.artifact.gate import acceptance
from edgecls.artifact.manifest import Manifest, read_manifest
from edgecls.artifact.runtime_libs import host_arch
from edgecls.errors import ArtifactError

# fp32 TVM vs ONNX Runtime differs by ~1e-6 here; anything near this bound is a miscompile.
VERIFY_ATOL = 1e-3
# QDQ int8 graphs: one intermediate activation landing on the other side of a rounding step moves
# float logits by ~1e-2 (measured 0.006-0.012 for QAT digits); a miscompile is far larger.
VERIFY_ATOL_QUANTIZED = 5e-2
# Images per runner call over the validation split: each call has its own time limit (under qemu
# a large model takes seconds per image) and logs progress.
VAL_CHUNK = 256


def _is_quantized(onnx_path: Path) -> bool:
    import onnx
    return any(n.op_type == "QuantizeLinear" for n in onnx.load(str(onnx_path), load_external_data=False).graph.node)


def verify_artifact(root: Path, emulator_ok: bool, log) -> dict:
    """Run the artifact's own runner on the reference input and compare with ONNX Runtime."""
    manifest = read_manifest(root)
    arch = manifest["target"]["arch"]
    if arch != host_arch() and not emulator_ok:
        return {"how": "skipped", "reason": f"{arch} artifact and no emulator installed"}
    cpus = [None] if arch == host_arch() else list(manifest["target"].get("emulator_cpus") or [None])
    how = "native" if arch == host_arch() else "emulated (" + " ".join(
        [*manifest["target"]["emulator"], *(["-cpu", cpus[0]] if cpus[0] else [])]) + ")"
    log(f"verify: running the artifact's runner ({how}) on the reference input")
    report, got = _run_reference(root, cpus[0])
    want = np.load(root / "reference" / "output.npy")
    for cpu in cpus[1:]:  # the board's other cores: the same code must run there, with the same result
        log(f"verify: running it again under qemu -cpu {cpu}")
        if not np.array_equal(_run_reference(root, cpu)[1], got):
            raise ArtifactError(f"the artifact's output under qemu -cpu {cpu} differs from -cpu {cpus[0]}; "
                                f"nothing was written")
    if got.shape != want.shape:
        raise ArtifactError(f"artifact output shape {got.shape} differs from ONNX Runtime's {want.shape}")
    diff = float(np.abs(got.astype(np.float64) - want).max())
    k = min(5, want.shape[-1])
    top_got = np.argsort(-got.reshape(-1, want.shape[-1])[0])[:k].tolist()
    top_want = np.argsort(-want.reshape(-1, want.shape[-1])[0])[:k].tolist()
    result = {"how": how, "cpus": [c for c in cpus if c], "reference": "onnxruntime", "max_abs_diff": diff,
              "top1_match": top_got[0] == top_want[0], "top5_match": top_got == top_want,
              "runner_ms": report["timings_ms"]["median"]}
    atol = VERIFY_ATOL_QUANTIZED if _is_quantized(root / "model.onnx") else VERIFY_ATOL
    result["tolerance"] = atol
    if diff > atol * max(1.0, float(np.abs(want).max())):
        raise ArtifactError(f"compiled artifact disagrees with ONNX Runtime: max abs diff {diff:.3g} "
                            f"on the reference input (miscompile); nothing was written")
    return result


def _run_reference(root: Path, cpu: str | None) -> tuple[dict, np.ndarray]:
    """The runner's report and output on the reference input (under qemu -cpu `cpu` if foreign)."""
    out_path = root.parent / f".{root.name}.verify.npy"
    try:
        report = run_runner(root, root / "reference" / "input.npy", emulate=True, output_path=out_path, cpu=cpu)
        return report, np.load(out_path)
    finally:
        out_path.unlink(missing_ok=True)


@dataclass
class Validation:
    """The full validation split every stage is measured on, and the original model's top-1 per image."""
    x: np.ndarray
    y: np.ndarray
    original_pred: np.ndarray


def artifact_accuracy(root: Path, emulator_ok: bool, log, val: Validation | None) -> tuple[dict | None, np.ndarray | None]:
    """Top-1 of the compiled artifact itself, by its own runner over the full validation split (in
    chunks, each a runner call with a time limit); the stage and its per-image predictions."""
    if val is None:
        return None, None
    manifest = read_manifest(root)
    if manifest["target"]["arch"] != host_arch() and not emulator_ok:
        return {"stage": "compiled", "top1": None, "n": len(val.y), "how": "skipped: no emulator"}, None
    how = "native" if manifest["target"]["arch"] == host_arch() else "emulated"
    log(f"accuracy: running the artifact's runner ({how}) over {len(val.y)} validation images")
    preds, top5_hits = [], 0.0
    scratch = root.parent / f".{root.name}.val"
    scratch.mkdir(exist_ok=True)
    try:
        for start in range(0, len(val.y), VAL_CHUNK):
            chunk = slice(start, start + VAL_CHUNK)
            files = [scratch / f for f in ("x.npy", "y.npy", "pred.npy")]
            np.save(files[0], np.ascontiguousarray(val.x[chunk], np.float32))
            np.save(files[1], np.ascontiguousarray(val.y[chunk], np.int64))
            report = run_runner(root, root / "reference" / "input.npy", emulate=True, timeout=60 + 5 * VAL_CHUNK,
                                extra=["--val-x", str(files[0]), "--val-y", str(files[1]), "--val-pred", str(files[2])])
            preds.append(np.load(files[2]))
            acc = report.get("accuracy") or {}
            top5_hits = None if acc.get("top5") is None or top5_hits is None else top5_hits + acc["top5"] * acc["n"]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    pred = np.concatenate(preds)
    carried_y = root / "reference" / "val_y.npy"
    carried = len(np.load(carried_y)) if carried_y.is_file() else 0
    stage = {"stage": "compiled", "top1": float((pred == val.y).mean()),
             "top5": None if top5_hits is None else top5_hits / len(val.y), "n": int(len(val.y)),
             "how": f"edgecls-runner ({how})", "size_bytes": sum(f["size"] for f in manifest["files"].values())}
    if carried:  # the batch boards measure on-device top-1 on: the split's first images
        stage["carried"] = {"n": carried, "top1": float((pred[:carried] == val.y[:carried]).mean())}
    return stage, pred


def record_checks(root: Path, manifest: Manifest, *, verify: bool, emulator_ok: bool, val: Validation | None,
                  max_drop: float | None, log) -> None:
    """Fill verification, the compiled stage and acceptance of an artifact whose manifest is written."""
    if verify:
        manifest.verification = verify_artifact(root, emulator_ok, log)
        if len(manifest.batches) > 1 and manifest.verification.get("tolerance"):
            manifest.verification["batches"] = verify_batches(
                root, manifest.batches, manifest.verification["tolerance"], emulator_ok, log)
    else:
        manifest.verification = {"how": "skipped", "reason": "--no-verify"}
    compiled_stage, compiled_pred = artifact_accuracy(root, emulator_ok, log, val)
    if compiled_stage:
        manifest.stages.append(compiled_stage)
    manifest.acceptance = acceptance(val.original_pred if val else None, compiled_pred, val.y if val else None,
                                     max_drop)
