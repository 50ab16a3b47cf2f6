"""Checks of a built artifact by its own runner: numerics against ONNX Runtime, top-1 on the
validation batch it carries, and the --max-accuracy-drop gate over the recorded stages."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecls.artifact.batches import verify_batches
from edgecls.artifact.execute import run_runner
from edgecls.artifact.manifest import Manifest, read_manifest
from edgecls.artifact.reference import onnx_top1
from edgecls.artifact.runtime_libs import host_arch
from edgecls.errors import ArtifactError

# fp32 TVM vs ONNX Runtime differs by ~1e-6 here; anything near this bound is a miscompile.
VERIFY_ATOL = 1e-3
# QDQ int8 graphs: one intermediate activation landing on the other side of a rounding step moves
# float logits by ~1e-2 (measured 0.006-0.012 for QAT digits); a miscompile is far larger.
VERIFY_ATOL_QUANTIZED = 5e-2


def _is_quantized(onnx_path: Path) -> bool:
    import onnx
    return any(n.op_type == "QuantizeLinear" for n in onnx.load(str(onnx_path), load_external_data=False).graph.node)


def acceptance(stages: list[dict], max_drop: float | None) -> dict:
    """--max-accuracy-drop: artifact top-1 may fall at most X points below the original."""
    if max_drop is None:
        return {"accepted": True, "max_accuracy_drop": None}
    # The artifact is measured on the batch it carries; compare with the original on the same images.
    first = stages[0].get("top1_carried", stages[0].get("top1")) if stages else None
    last = next((st.get("top1") for st in stages[1:] if st.get("stage") == "compiled"), None)
    if first is None or last is None:
        return {"accepted": False, "max_accuracy_drop": max_drop,
                "reason": "--max-accuracy-drop needs validation data (--data or --val-data) and a runnable artifact"}
    drop = (first - last) * 100
    ok = drop <= max_drop
    return {"accepted": ok, "max_accuracy_drop": max_drop, "drop_points": round(drop, 3),
            **({} if ok else {"reason": f"top-1 on the validation batch fell {drop:.2f} points ({first:.4f} -> {last:.4f}), "
                                        f"more than --max-accuracy-drop {max_drop}"})}


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


def artifact_accuracy(root: Path, emulator_ok: bool, log) -> dict | None:
    """Top-1 of the compiled artifact itself, by its own runner over the batch it carries."""
    manifest = read_manifest(root)
    if "reference/val_x.npy" not in manifest["files"]:
        return None
    if manifest["target"]["arch"] != host_arch() and not emulator_ok:
        return {"stage": "compiled", "top1": None, "how": "skipped: no emulator"}
    log("accuracy: running the artifact's runner over its validation batch")
    report = run_runner(root, root / "reference" / "input.npy", emulate=True,
                        extra=["--val-x", "reference/val_x.npy", "--val-y", "reference/val_y.npy"])
    acc = report.get("accuracy") or {}
    how = "native" if manifest["target"]["arch"] == host_arch() else "emulated"
    return {"stage": "compiled", "top1": acc.get("top1"), "top5": acc.get("top5"), "n": acc.get("n"),
            "how": f"edgecls-runner ({how})",
            "size_bytes": sum(f["size"] for f in manifest["files"].values())}


def record_checks(root: Path, manifest: Manifest, *, verify: bool, emulator_ok: bool, measure_original: bool,
                  max_drop: float | None, log) -> None:
    """Fill verification, the compiled stage and acceptance of an artifact whose manifest is written.

    measure_original: the first stage has no top-1 yet (no optimize stage measured it), so take
    the original's in ONNX Runtime on the batch the artifact carries.
    """
    if verify:
        manifest.verification = verify_artifact(root, emulator_ok, log)
        if len(manifest.batches) > 1 and manifest.verification.get("tolerance"):
            manifest.verification["batches"] = verify_batches(
                root, manifest.batches, manifest.verification["tolerance"], emulator_ok, log)
    else:
        manifest.verification = {"how": "skipped", "reason": "--no-verify"}
    if measure_original and (root / "reference" / "val_x.npy").is_file():
        manifest.stages[0]["top1"] = onnx_top1(root / "model.onnx", np.load(root / "reference" / "val_x.npy"),
                                               np.load(root / "reference" / "val_y.npy"))
    compiled_stage = artifact_accuracy(root, emulator_ok, log)
    if compiled_stage:
        manifest.stages.append(compiled_stage)
    manifest.acceptance = acceptance(manifest.stages, max_drop)
