"""A model class from the user's own project (issue #18): `torch.save(model)` of a class in
mynet.py, loaded by the `edgecls` console script (whose sys.path holds no project folder) as
Python would load it: from the current folder, or from the code named with --model-code."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from conftest import edgecls

from edgecls.data import write_digits_image_folder

MYNET = textwrap.dedent("""
    import torch


    class MyNet(torch.nn.Module):
        def __init__(self, classes=10):
            super().__init__()
            self.c1 = torch.nn.Conv2d(3, 32, 3, padding=1)
            self.b1 = torch.nn.BatchNorm2d(32)
            self.c2 = torch.nn.Conv2d(32, 32, 3, padding=1)
            self.fc = torch.nn.Linear(32, classes)

        def forward(self, x):
            x = torch.relu(self.b1(self.c1(x)))
            x = torch.relu(self.c2(x))
            return self.fc(x.mean((2, 3)))
""")


def _project(root, *, in_main: bool = False):
    """root/mynet.py and root/model.pth saved by a script run in root, as a user would. in_main:
    the class is defined in the saving script itself (pickled as __main__.MyNet). The model is
    untrained (near chance on the data), so the commands pass --accept-low-accuracy (#19's check)."""
    root.mkdir(parents=True)
    (root / "mynet.py").write_text(MYNET)
    save = ("torch.manual_seed(0); torch.save(MyNet().eval(), 'model.pth')" if in_main else
            "import mynet; torch.manual_seed(0); torch.save(mynet.MyNet().eval(), 'model.pth')")
    script = (MYNET + "\n" if in_main else "import torch\n") + save + "\n"
    subprocess.run([sys.executable, "-c", script], cwd=root, check=True)
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = _project(tmp_path_factory.mktemp("user") / "proj")
    write_digits_image_folder(root / "data", size=8)  # 1797 8x8 images: fine-tuning takes seconds
    return root


def test_missing_class_names_the_module_and_what_to_do(project, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    p = edgecls("compile", project / "model.pth", "--target", "x86-host", "--input-shape", "1,3,8,8",
                "-o", tmp_path / "out", cwd=elsewhere)
    assert p.returncode == 3, p.stderr
    line = p.stderr.strip()
    assert line.count("\n") == 0 and "Traceback" not in line, line
    assert "mynet.MyNet is not importable" in line and "No module named 'mynet'" in line, line
    assert "run edgecls in the folder that holds mynet.py" in line and "--model-code path/to/mynet.py" in line, line
    assert not (tmp_path / "out").exists()
    p = edgecls("compile", project / "model.pth", "--target", "x86-host", "--model-code", tmp_path / "none.py",
                "-o", tmp_path / "out", cwd=elsewhere)
    assert p.returncode == 2 and "--model-code" in p.stderr and "does not exist" in p.stderr, p.stderr


def test_class_saved_from_main_loads_with_model_code(project, tmp_path):
    """A class defined in the training script pickles as __main__.MyNet: the named file supplies
    it by name; without it the error says so."""
    main_proj = _project(tmp_path / "mainproj", in_main=True)
    args = ("optimize", main_proj / "model.pth", "--data", project / "data", "--quantize", "fp16",
            "--input-shape", "1,3,8,8", "--no-tflite", "--accept-low-accuracy")
    p = edgecls(*args, "-o", tmp_path / "o1", cwd=tmp_path)
    assert p.returncode == 3 and "defined in the script that saved it (__main__)" in p.stderr, p.stderr
    assert "--model-code FILE.py" in p.stderr
    p = edgecls(*args, "--model-code", main_proj / "mynet.py", "-o", tmp_path / "o2", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    stages = json.loads((tmp_path / "o2" / "optimize.json").read_text())["stages"]
    assert [s["stage"] for s in stages] == ["original", "quantized"]
    assert stages[1]["size_bytes"] < 0.6 * stages[0]["size_bytes"]  # fp16 weights


@pytest.mark.slow
def test_prune_and_qat_of_a_user_class_from_its_folder(project, tmp_path):
    """The issue's command, run in the project folder: the class imports from there, pruning
    really shrinks it and QAT gives int8 weights, compiled and verified on this machine."""
    out = tmp_path / "art"
    p = edgecls("compile", "model.pth", "--target", "x86-host", "--data", "data", "--prune", "0.5",
                "--quantize", "qat", "--epochs", "2", "--input-shape", "1,3,8,8", "--no-tflite", "--accept-low-accuracy",
                "-o", out,
                cwd=project)
    assert p.returncode == 0, p.stderr
    m = json.loads((out / "manifest.json").read_text())
    stages = {s["stage"]: s for s in m["stages"]}
    assert list(stages) == ["original", "pruned", "fine-tuned", "quantized", "compiled"]
    assert stages["fine-tuned"]["params"] < 0.5 * stages["original"]["params"]
    assert stages["quantized"]["method"] == "qat" and m["acceptance"]["accepted"]
    assert m["variant"].startswith("pruned50-int8-qat")
    assert m["model"]["name"] == "model" and stages["compiled"]["how"] == "edgecls-runner (native)"


def test_model_code_folder_goes_on_the_import_path(project, tmp_path):
    p = edgecls("optimize", project / "model.pth", "--data", project / "data", "--quantize", "fp16",
                "--input-shape", "1,3,8,8", "--no-tflite", "--accept-low-accuracy", "--model-code", project,
                "-o", tmp_path / "o", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "o" / "model.onnx").is_file()
