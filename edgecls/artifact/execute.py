"""Run an artifact's own native runner: natively for the host arch, under qemu for a foreign arch.

Where the runner executes is a parameter (native / emulated here; SSH boards add another), the
runner and its JSON output are the same everywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np

from edgecls.artifact.manifest import require_intact
from edgecls.artifact.runtime_libs import host_arch
from edgecls.errors import ArtifactError, ToolchainError, UsageError
from edgecls.targets import Target

RUNNER = "edgecls-runner"


def emulator_command(target: Target, cpu: str | None = None) -> list[str]:
    """The target's emulator with its qemu CPU model (`cpu`, else the target's first)."""
    if not target.emulator:
        raise UsageError(f"target {target.name} declares no emulator; run the artifact on a board")
    return target.emulator_command(cpu)


def runner_prefix(artifact: Path, manifest: dict, emulate: bool, cpu: str | None = None) -> list[str]:
    arch = manifest["target"]["arch"]
    if arch == host_arch():
        return []
    if not emulate:
        raise UsageError(f"artifact {artifact} is for {arch} and this machine is {host_arch()}; "
                         f"pass --emulate to run it under qemu, or deploy it to a board")
    return emulator_command(Target.from_dict(manifest["target"]), cpu)


def run_runner(artifact: str | Path, input_path: Path, *, emulate: bool = False, topk: int = 5,
               output_path: Path | None = None, warmup: int = 0, runs: int = 1,
               threads: int | None = None, timeout: float = 600, extra: list[str] = (),
               model: str = "model.so", cpu: str | None = None) -> dict:
    """Run the artifact's runner on one .npy input; returns the runner's JSON report.

    extra: more runner flags with paths relative to the artifact (e.g. --val-x reference/val_x.npy).
    """
    artifact = Path(artifact)
    manifest = require_intact(artifact)  # a tampered artifact never runs
    prefix = runner_prefix(artifact, manifest, emulate, cpu)
    cmd = prefix + [
        str((artifact / RUNNER).resolve()), "--model", str((artifact / model).resolve()),
        "--input", str(Path(input_path).resolve()), "--topk", str(topk),
        "--warmup", str(warmup), "--runs", str(runs)]
    if output_path is not None:
        cmd += ["--output", str(Path(output_path).resolve())]
    if threads:
        cmd += ["--threads", str(threads)]
    cmd += [str((artifact / a).resolve()) if a.startswith("reference/") else a for a in extra]
    env = dict(os.environ)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except FileNotFoundError as exc:
        raise ToolchainError(f"cannot start {cmd[0]}: {exc.strerror}") from None
    except subprocess.TimeoutExpired:
        raise ArtifactError(f"runner did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        if prefix and _illegal_instruction(proc):
            cpu_model = prefix[prefix.index("-cpu") + 1]
            raise ArtifactError(
                f"the artifact executes an instruction the {cpu_model} lacks (illegal instruction under "
                f"qemu -cpu {cpu_model}): target {manifest['target']['name']} claims CPU features "
                f"(tvm mcpu/mattr) its board does not have; fix the target TOML")
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        msg = lines[-1] if lines else f"exit code {proc.returncode}"
        raise ArtifactError(f"runner failed: {msg.removeprefix('edgecls-runner: error: ')}")
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise ArtifactError(f"runner printed no JSON report: {proc.stdout[:200]!r}") from None


def _illegal_instruction(proc: subprocess.CompletedProcess) -> bool:
    """qemu-user re-raises the guest's SIGILL on itself (or reports it and exits 132)."""
    return proc.returncode in (-4, 132) or "Illegal instruction" in (proc.stderr or "")


def save_npy(path: Path, array: np.ndarray) -> Path:
    np.save(path, np.ascontiguousarray(array))
    return path



def predict(artifact: str | Path, input_path: Path | None, *, emulate: bool = False, topk: int = 5,
            save_output: Path | None = None, threads: int | None = None) -> dict:
    """`edgecls run`: an image (preprocessed as the manifest says) or a .npy through the runner.

    Without an input, the artifact's stored reference input is used and the result is compared
    with the ONNX Runtime output stored at compile time.
    """
    import tempfile

    from edgecls.data import Preprocess, preprocess_image

    artifact = Path(artifact)
    manifest = require_intact(artifact)
    spec = manifest["model"]["input"]
    with tempfile.TemporaryDirectory(prefix="edgecls-run-") as tmp:
        if input_path is None:
            npy = artifact / "reference" / "input.npy"
        elif not Path(input_path).is_file():
            raise UsageError(f"input {input_path} does not exist")
        elif Path(input_path).suffix.lower() == ".npy":
            npy = Path(input_path)
            x = np.load(npy, allow_pickle=False)
            if list(x.shape) != list(spec["shape"]) or str(x.dtype) != spec["dtype"]:
                raise UsageError(f"{input_path} holds {x.dtype}{list(x.shape)}; the model expects "
                                 f"{spec['dtype']}{spec['shape']}")
        else:
            pre = Preprocess.from_dict(manifest["preprocess"])
            npy = save_npy(Path(tmp) / "input.npy", preprocess_image(input_path, pre).astype(spec["dtype"]))
        out = save_output or Path(tmp) / "output.npy"
        native = not runner_prefix(artifact, manifest, emulate)
        # One warm-up natively so the printed time is not the first-call set-up; under qemu the
        # time means little and a second run would only double the wait.
        report = run_runner(artifact, npy, emulate=emulate, topk=topk, output_path=out, threads=threads,
                            warmup=1 if native else 0)
        labels = manifest.get("labels") or []
        for item in report["topk"]:
            item["label"] = labels[item["index"]] if item["index"] < len(labels) else str(item["index"])
        if input_path is None:
            got, want = np.load(out), np.load(artifact / "reference" / "output.npy")
            report["reference_max_abs_diff"] = float(np.abs(got.astype(np.float64) - want).max())
    report["artifact"] = str(artifact)
    report["target"] = manifest["target"]["name"]
    report["where"] = "native" if native else "emulated"
    if save_output:
        report["saved_output"] = str(save_output)
    return report
