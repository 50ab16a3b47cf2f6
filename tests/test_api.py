"""The Python API (edgecls/api.py): the README's example as it stands, in-memory modules through
prune + quantize, Artifact.run under qemu, the CLI's errors as exceptions, a cheap import."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import edgecls as edgecls_cli
from conftest import has_aarch64_toolchain

import edgecls
from edgecls.data import write_digits_image_folder

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example() -> str:
    """The first python block of the README's "Python API" section."""
    text = README.read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_example_runs_as_written(tmp_path):
    (tmp_path / "example.py").write_text(readme_example())
    p = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert lines[0].startswith("Artifact('build/tiny', target='x86-host', variant='fp32') max |runner - torch|:")
    assert float(lines[0].rsplit(":", 1)[1]) < 1e-4, lines[0]
    assert re.fullmatch(r"TinyNet@[0-9a-f]{8} tvm fp32 threads \d+ \d+\.\d{3} ms", lines[1]), lines
    assert lines[2] == "error: model file missing.onnx does not exist", lines
    art = edgecls.load_artifact(tmp_path / "build" / "tiny")
    assert art.manifest["model"]["name"] == "TinyNet" and art.input_shape == (1, 3, 32, 32)
    ref = tmp_path / "build" / "tiny" / "reference" / "input.npy"
    ref.write_bytes(ref.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(edgecls.ArtifactError, match="fails its checksums"):
        edgecls.load_artifact(tmp_path / "build" / "tiny")


def test_errors_are_the_cli_lines_as_typed_exceptions(tmp_path):
    """The same check, the same one line: raised by the API, printed by the CLI."""
    with pytest.raises(edgecls.TargetError) as api_err:
        edgecls.compile(tmp_path / "m.onnx", "no-such-board", tmp_path / "out")
    p = edgecls_cli("compile", tmp_path / "m.onnx", "--target", "no-such-board", "-o", tmp_path / "out")
    assert p.returncode == api_err.value.exit_code == 4
    assert p.stderr.strip() == f"error: {api_err.value}"
    assert isinstance(api_err.value, edgecls.EdgeclsError)
    with pytest.raises(edgecls.UsageError, match="give either --board"):
        edgecls.bench(tmp_path, out_dir=tmp_path / "r")
    with pytest.raises(edgecls.EdgeclsError, match="no bench report files given"):
        edgecls.report([])
    with pytest.raises(edgecls.UsageError, match="model must be a path or a torch.nn.Module"):
        edgecls.compile(42, "x86-host", tmp_path / "out")


def test_import_is_cheap_and_compile_stays_callable():
    code = ("import sys, edgecls; heavy = [m for m in ('torch', 'tvm', 'numpy', 'onnx', 'click') if m in sys.modules];"
            "import edgecls.compile.build; print(heavy, callable(edgecls.compile), edgecls.compile.build.__name__)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert p.stdout.split() == ["[]", "True", "edgecls.compile.build"]


class SmallCNN(torch.nn.Module):
    """A user's class defined in the calling module (pickled as test_api.SmallCNN)."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 32, 3, padding=1)
        self.c2 = torch.nn.Conv2d(32, 32, 3, padding=1)
        self.fc = torch.nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).mean((2, 3)))


@pytest.mark.slow
@pytest.mark.skipif(not has_aarch64_toolchain(), reason="needs g++-aarch64-linux-gnu and qemu-user")
def test_in_memory_module_pruned_quantized_for_rk3399_runs_under_qemu(tmp_path):
    data = write_digits_image_folder(tmp_path / "digits", size=8)
    torch.manual_seed(0)
    lines = []
    art = edgecls.compile(SmallCNN().eval(), "rk3399", tmp_path / "rk", data=data, prune=0.5, quantize="ptq",
                          epochs=1, input_shape=(1, 3, 8, 8), tflite=False, log=lines.append,
                          accuracy_check=False)  # untrained: near chance, as #19's check would say
    assert isinstance(art, edgecls.Artifact) and art.target == "rk3399"
    assert art.variant.startswith("pruned50-int8-static") and art.manifest["model"]["name"] == "SmallCNN"
    assert [s["stage"] for s in art.stages] == ["original", "pruned", "fine-tuned", "quantized", "compiled"]
    assert any(line.startswith("pruned 0.5") for line in lines), lines
    # The runner under qemu -cpu cortex-a72 gives what ONNX Runtime gave at compile time ...
    x = np.load(art.path / "reference" / "input.npy")
    want = np.load(art.path / "reference" / "output.npy")
    np.testing.assert_allclose(art.run(x), want, atol=1e-4)
    # ... and a batch of 3 runs row by row; float64 input is cast to the model's float32.
    val_x = np.load(art.path / "reference" / "val_x.npy")[:3].astype(np.float64)
    out = art.run(val_x)
    assert out.shape == (3, 10)
    np.testing.assert_allclose(out[1:2], art.run(val_x[1:2]), atol=1e-6)
    with pytest.raises(edgecls.UsageError, match=r"the model takes \[1, 3, 8, 8\]"):
        art.run(np.zeros((1, 3, 16, 16), np.float32))
