"""An artifact directory as a Python object: what `edgecls.compile` returns and
`edgecls.load_artifact` opens.

`run(x)` goes through the artifact's own native runner, the same program boards run, natively
or under the target's qemu CPU for an aarch64 artifact: what it returns is what the board
computes, not what torch or ONNX Runtime would.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecls.artifact.manifest import read_manifest, require_intact
from edgecls.errors import UsageError


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: dict

    @property
    def target(self) -> str:
        return self.manifest["target"]["name"]

    @property
    def variant(self) -> str:
        return self.manifest.get("variant", "fp32")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["model"]["input"]["shape"])

    @property
    def input_dtype(self) -> str:
        return self.manifest["model"]["input"]["dtype"]

    @property
    def stages(self) -> list[dict]:
        """Accuracy, MACs and size per stage (original, pruned, ..., compiled), as the console shows."""
        return list(self.manifest.get("stages") or [])

    def __repr__(self) -> str:
        return f"Artifact({str(self.path)!r}, target={self.target!r}, variant={self.variant!r})"

    def run(self, x, *, threads: int | None = None) -> np.ndarray:
        """The model's first output for `x` (the input shape, or a batch of N of it), computed by the
        artifact's runner: natively, or under qemu when the artifact is for another arch. A batch
        uses the artifact's batch-N library when it has one (`batch_sizes=`), else runs row by row."""
        from edgecls.artifact.execute import run_runner
        x = self._checked_input(x)
        shape = self.input_shape
        libraries = self.manifest.get("batches") or {}
        if x.shape[0] == shape[0] or str(x.shape[0]) in libraries:
            chunks, library = [x], libraries.get(str(x.shape[0]), "model.so")
        else:
            chunks, library = [x[i:i + shape[0]] for i in range(0, x.shape[0], shape[0])], "model.so"
        outputs = []
        with tempfile.TemporaryDirectory(prefix="edgecls-artifact-run-") as tmp:
            for i, chunk in enumerate(chunks):
                src, out = Path(tmp) / f"in{i}.npy", Path(tmp) / f"out{i}.npy"
                np.save(src, np.ascontiguousarray(chunk))
                run_runner(self.path, src, emulate=True, output_path=out, threads=threads, model=library)
                outputs.append(np.load(out))
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

    def _checked_input(self, x) -> np.ndarray:
        shape, dtype = self.input_shape, np.dtype(self.input_dtype)
        x = np.asarray(x)
        if x.dtype != dtype:
            if x.dtype.kind != dtype.kind and not (x.dtype.kind in "iu" and dtype.kind == "f"):
                raise UsageError(f"input is {x.dtype}; the model takes {dtype}{list(shape)}")
            x = x.astype(dtype)
        if x.ndim != len(shape) or tuple(x.shape[1:]) != shape[1:] or x.shape[0] % shape[0]:
            raise UsageError(f"input has shape {list(x.shape)}; the model takes {list(shape)} "
                             f"(or a batch of N x {list(shape[1:])})")
        return x


def load_artifact(path: str | Path, *, check: bool = True) -> Artifact:
    """Open an artifact directory; check=True refuses one whose files do not match the manifest."""
    path = Path(path)
    manifest = require_intact(path) if check else read_manifest(path)
    return Artifact(path=path, manifest=manifest)
