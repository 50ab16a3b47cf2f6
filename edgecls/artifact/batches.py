"""Extra static batch sizes in one artifact: `compile --batch-sizes 1,2,4,8`, `bench --batch ...`.

Our schedules and tuning records are per static shape, so each batch size is its own model_bN.so
(same graph, same target), beside model.so (batch 1). Each is verified: the reference input is
tiled N times and every output row must equal ONNX Runtime's batch-1 output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecls.errors import ArtifactError, UsageError


def library_name(batch: int) -> str:
    return "model.so" if batch == 1 else f"model_b{batch}.so"


def input_name(batch: int) -> str:
    return "reference/input.npy" if batch == 1 else f"reference/input_b{batch}.npy"


def output_name(batch: int) -> str:
    return "reference/output.npy" if batch == 1 else f"reference/output_b{batch}.npy"


def parse_batches(text: str | None) -> tuple[int, ...]:
    if not text:
        return (1,)
    try:
        sizes = sorted({int(p) for p in str(text).split(",") if p.strip()})
    except ValueError:
        raise UsageError(f"batch sizes '{text}' must be a comma list of positive integers, e.g. 1,2,4,8") from None
    if not sizes or sizes[0] < 1 or sizes[-1] > 1024:
        raise UsageError(f"batch sizes '{text}' must be between 1 and 1024")
    return tuple(sizes)


def build_batches(tmp: Path, model, sizes: tuple[int, ...], compile_one, log) -> dict:
    """compile_one(model, out_library) for every extra batch size; returns {batch: library}."""
    from edgecls.load import rebatch_model
    if any(b != 1 for b in sizes) and model.input.shape[0] != 1:
        raise UsageError(f"--batch-sizes needs a model with batch 1 (input {list(model.input.shape)})")
    out = {"1": "model.so"}
    x, y = np.load(tmp / "reference" / "input.npy"), np.load(tmp / "reference" / "output.npy")
    for b in sizes:
        if b == 1:
            continue
        log(f"batch {b}: compiling {library_name(b)}")
        mb = rebatch_model(model, b)
        compile_one(mb, tmp / library_name(b))
        np.save(tmp / input_name(b), np.repeat(x, b, axis=0))
        np.save(tmp / output_name(b), np.repeat(y, b, axis=0))  # what the runner's --ref-output checks
        out[str(b)] = library_name(b)
    return out


def verify_batches(root: Path, batches: dict, atol: float, emulator_ok: bool, log) -> dict:
    """Every row of the batch-N output equals ONNX Runtime's batch-1 reference output."""
    from edgecls.artifact.execute import run_runner
    want = np.load(root / "reference" / "output.npy")
    result = {}
    for b, lib in batches.items():
        if b == "1" or not emulator_ok:
            continue
        out = root.parent / f".{root.name}.b{b}.npy"
        try:
            run_runner(root, root / input_name(int(b)), emulate=True, output_path=out, model=lib)
            got = np.load(out)
        finally:
            out.unlink(missing_ok=True)
        if got.shape[0] != int(b):
            raise ArtifactError(f"{lib}: output batch {got.shape[0]}, expected {b}")
        diff = float(np.abs(got.astype(np.float64) - want).max())
        if diff > atol * max(1.0, float(np.abs(want).max())):
            raise ArtifactError(f"{lib} disagrees with ONNX Runtime: max abs diff {diff:.3g} (miscompile)")
        log(f"verify: batch {b} matches (max abs diff {diff:.2g})")
        result[b] = {"max_abs_diff": diff}
    return result
