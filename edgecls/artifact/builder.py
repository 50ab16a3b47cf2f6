"""ArtifactBuilder: stages an artifact's files in its temp dir and describes them in a Manifest.

The compile job (edgecls.pipeline) decides what goes in; the builder knows where each file lives
in the artifact and what the manifest says about it. Files, in the order they are made:
  model.so (model_bN.so)   TVM libraries, written by the compiler into `library`
  model.onnx               the graph ONNX Runtime and TVM imported (fp16 weights when fp16)
  edgecls-runner           the native runner for the target's arch
  reference/               input.npy + ONNX Runtime's output.npy (+ val_x/val_y.npy)
  harness/                 the standalone board-side harnesses
  labels.txt, model.tflite when there are labels / a LiteRT model
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from edgecls.artifact import manifest as mf
from edgecls.artifact.batches import build_batches
from edgecls.artifact.native import build_runner, required_glibc
from edgecls.artifact.reference import onnx_reference, reference_input
from edgecls.artifact.runtime_libs import RuntimeLibs
from edgecls.compile import tvm as tvm_adapter
from edgecls.targets import Target

# Standalone board-side harnesses (ONNX Runtime / LiteRT, TensorRT + its parsers), shipped as files.
HARNESS_DIR = Path(__file__).parent / "harness"


class ArtifactBuilder:
    def __init__(self, root: Path, target: Target, libs: RuntimeLibs, log):
        self.root, self.target, self.libs, self.log = root, target, libs, log
        self.runner: Path | None = None
        self.batches: dict = {"1": "model.so"}
        self.runtimes = ["tvm", "onnxruntime"]

    @property
    def library(self) -> Path:
        return self.root / "model.so"

    def add_onnx(self, model, fp16_weights: bool = False) -> None:
        import onnx
        onnx.save(model.onnx, str(self.root / "model.onnx"))
        if fp16_weights:
            # onnxsim folded the fp16 -> fp32 Casts; ship the half-size file boards download.
            from edgecls.optimize.fp16 import fp16_weights_onnx
            fp16_weights_onnx(self.root / "model.onnx", self.root / "model.onnx")

    def add_runner(self) -> None:
        self.log(f"runner: building edgecls-runner for {self.target.arch} with {self.target.compiler}")
        self.runner = build_runner(self.target.arch, self.target.compiler, self.root, self.libs)

    def add_reference(self, model) -> None:
        """One input (seeded by the model's hash) and ONNX Runtime's output for it."""
        (self.root / "reference").mkdir()
        x = reference_input(model.input.shape, model.input.dtype, seed=int(model.sha256[:8], 16))
        np.save(self.root / "reference" / "input.npy", x)
        np.save(self.root / "reference" / "output.npy", onnx_reference(self.root / "model.onnx", x))

    def add_batches(self, model, sizes: tuple[int, ...], compile_one) -> None:
        """model_bN.so for every extra batch size, with their reference data (needs add_reference)."""
        self.batches = build_batches(self.root, model, sizes, compile_one, self.log)

    def add_validation(self, x: np.ndarray, y: np.ndarray) -> None:
        np.save(self.root / "reference" / "val_x.npy", x)
        np.save(self.root / "reference" / "val_y.npy", y)

    def add_harness(self) -> None:
        (self.root / "harness").mkdir()
        for src in sorted(HARNESS_DIR.glob("*.py")):
            shutil.copy2(src, self.root / "harness" / src.name)

    def add_labels(self, labels: list[str] | None) -> None:
        if labels:
            (self.root / "labels.txt").write_text("\n".join(labels) + "\n")

    def add_tflite(self, path: Path) -> None:
        shutil.copy2(path, self.root / "model.tflite")
        self.runtimes.append("tflite")

    def manifest(self, model, compiled, *, preprocess: dict, labels: list[str] | None,
                 options: mf.OptionsSection, stages: list[dict], variant: str, optimized_from: str | None,
                 backend: dict, load_s: float, graph: dict | None = None,
                 origin: dict | None = None) -> mf.Manifest:
        """The manifest of what was staged; call after every add_*. origin: {name, sha256} of the
        file the user gave (the optimized model's source when optimized)."""
        origin = origin or {"name": model.path.stem, "sha256": model.sha256}
        return mf.Manifest(
            model=mf.ModelSection(source=str(model.path), format=model.format, sha256=model.sha256,
                                  input=model.input.to_dict(), output=model.output.to_dict(), notes=model.notes,
                                  name=origin["name"], origin_sha256=origin["sha256"]),
            target={**self.target.to_dict(), "tvm_resolved": compiled.tvm_target},
            layout=compiled.layout,
            preprocess=preprocess,
            labels=labels,
            options=options,
            passes=compiled.passes,
            stats=compiled.stats,
            stages=stages,
            variant=variant,
            optimized_from=optimized_from,
            runner=mf.RunnerSection(file=self.runner.name, arch=self.target.arch,
                                    glibc_required=required_glibc([self.library, self.runner, *self.libs.paths]),
                                    tvm_runtime=self.libs.source),
            versions=mf.library_versions({**tvm_adapter.versions(), "compiler": self.target.compiler}),
            batches=self.batches,
            runtimes_shipped=list(self.runtimes),
            backend=backend,
            timings={"load_s": round(load_s, 3), **compiled.timings},
            graph=graph,
        )

    def write(self, manifest: mf.Manifest) -> Path:
        """manifest.json with the checksums of everything staged so far."""
        return mf.write_manifest(self.root, manifest)
