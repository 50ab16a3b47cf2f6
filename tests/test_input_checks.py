"""A user's own model, as issue #19 tried it: a 1-channel 32x32 digits classifier trained on 0..1
pixels, with its ImageFolder. Shapes come from the model and the data, a preprocessing mismatch
stops before any work, and every stage (the artifact too) is measured on the same full split,
with a gate that reports its interval and refuses splits too small for its threshold."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import edgecls

from edgecls.artifact.gate import acceptance, images_needed, paired_drop, too_small
from edgecls.data import split, write_digits_image_folder
from edgecls.errors import UsageError
from edgecls.input_spec import ModelInput, check_given_shape, model_file_input
from edgecls.models import DigitsCNN
from edgecls.optimize.run import OptimizeRequest, optimize_model, temp_work_dir
from edgecls.preprocessing import check_preprocessing, choose_input
from edgecls.torch_state import deterministic_torch

ZERO_ONE = {"mean": [0.0], "std": [1.0]}  # how the user trained: pixels / 255, nothing else


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """model.pth (torch.save of a 1-channel DigitsCNN, 0..1 pixels), model.pt (TorchScript),
    data/ (the digits as gray 32x32 PNGs) and val300/ (300 of them)."""
    from edgecls.data import digits_dataset
    d = tmp_path_factory.mktemp("user")
    ds = digits_dataset(size=32, channels=1)  # normalised with 0.5/0.5: undo to 0..1
    tune, _, val = split(ds, seed=0)
    with deterministic_torch(1), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = DigitsCNN(10, in_channels=1, width=8)
        opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
        x, y = torch.from_numpy(tune.x * 0.5 + 0.5), torch.from_numpy(tune.y)
        for _ in range(4):
            for i in range(0, len(y), 32):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x[i:i + 32]), y[i:i + 32]).backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            acc = float((model(torch.from_numpy(val.x * 0.5 + 0.5)).argmax(1).numpy() == val.y).mean())
        torch.save(model, d / "model.pth")
        torch.jit.trace(model, torch.zeros(1, 1, 32, 32)).save(str(d / "model.pt"))
    assert acc >= 0.9, acc  # a real classifier, or the chance-level checks below prove nothing
    data = write_digits_image_folder(d / "data", size=32, mode="L")
    for cls in sorted(data.iterdir()):
        (d / "val300" / cls.name).mkdir(parents=True)
        for f in sorted(cls.iterdir())[:30]:
            shutil.copy(f, d / "val300" / cls.name / f.name)
    return d


def _one_line_error(p, *needles):
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    for needle in needles:
        assert needle in p.stderr, (needle, p.stderr)


def test_channels_from_the_model_size_from_the_data(user):
    from edgecls.load import load_torch_module
    from edgecls.input_spec import module_input
    for info in (module_input(load_torch_module(user / "model.pth")), model_file_input(user / "model.pt")):
        assert info.channels == 1 and info.size is None
        choice = choose_input(info, user / "model.pth", None, ZERO_ONE, user / "data")
        assert choice.shape == (1, 1, 32, 32) and "first conv" in choice.shape_from and "32x32" in choice.shape_from
        assert choice.preprocess.mean == (0.0,) and choice.preprocess.size == (32, 32)
    # An exported program (and an ONNX input) fixes channels and size; NHWC is read off the dimensions.
    from edgecls.quiet import quiet_torch_export
    with quiet_torch_export():
        program = torch.export.export(load_torch_module(user / "model.pth"), (torch.zeros(1, 1, 32, 32),))
    torch.export.save(program, user / "model.pt2")
    assert model_file_input(user / "model.pt2") == ModelInput(1, (32, 32), "NCHW", "the exported program's input")
    assert ModelInput.from_dims(["batch", 3, 224, 224], "x") == ModelInput(3, (224, 224), "NCHW", "x")
    assert ModelInput.from_dims([1, 96, 96, 1], "x") == ModelInput(1, (96, 96), "NHWC", "x")
    # One --mean/--std value serves every channel of a 3-channel model.
    three = choose_input(ModelInput(3, None), user / "model.pth", None, ZERO_ONE, user / "data")
    assert three.shape == (1, 3, 32, 32) and three.preprocess.mean == (0.0, 0.0, 0.0)


def test_a_shape_mismatch_names_the_value_that_fits(user):
    with pytest.raises(UsageError, match="pass --input-shape 1,1,32,32"):
        check_given_shape(ModelInput(1, None, how="the model's first conv"), (1, 3, 32, 32))
    with pytest.raises(UsageError, match="pass --input-shape 1,3,224,224"):
        check_given_shape(ModelInput(3, (224, 224)), (1, 3, 32, 32))
    p = edgecls("optimize", user / "model.pth", "--data", user / "data", "--quantize", "ptq", "--mean", "0",
                "--std", "1", "--input-shape", "1,3,32,32", "-o", user / "never")
    _one_line_error(p, "first conv", "--input-shape 1,1,32,32")
    assert not (user / "never").exists()


def test_chance_level_stops_before_fine_tuning_and_names_the_fix(user, tmp_path):
    """The issue's command: ImageNet statistics on a 0..1 model. It stops after measuring the original
    (no fine-tune epoch ran), names what is in use, what would fit, and writes nothing."""
    out = tmp_path / "art"
    p = edgecls("compile", user / "model.pth", "--target", "x86-host", "--data", user / "data", "--prune", "0.5",
                "--quantize", "qat", "-v", "-o", out)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    err = p.stderr.strip().splitlines()[-1]
    for needle in ("on 270 validation images", "1x32x32 NCHW, mean 0.485, std 0.229, RGB, from the ImageNet defaults",
                   "with --mean 0 --std 1", "--mean/--std/--channel-order or --preprocess",
                   "model.preprocess.json next to model.pth", "nothing was optimized"):
        assert needle in err, (needle, err)
    assert "fine-tune epoch" not in p.stdout + p.stderr and not out.exists()


def test_an_untrained_model_is_near_chance_unless_accepted(user, tmp_path):
    """At chance whatever the preprocessing: near chance, no alternative to name; the user may go on."""
    torch.manual_seed(1)
    torch.save(DigitsCNN(10, in_channels=1, width=8).eval(), tmp_path / "untrained.pth")
    base = ["optimize", tmp_path / "untrained.pth", "--data", user / "val300", "--mean", "0", "--std", "1",
            "--no-tflite", "-o", tmp_path / "opt"]
    _one_line_error(edgecls(*base), "near chance (10.0 % for 10 classes)", "--mean/--std")
    assert not (tmp_path / "opt").exists()
    # The user says so (--accept-low-accuracy): it goes on. In process, as the Python API runs it.
    req = OptimizeRequest.from_options(tmp_path / "untrained.pth", user / "val300", None, None, None, prune=0,
                                       importance="magnitude", quantize="none", epochs=1, calib_method="minmax",
                                       seed=0, preprocess={**ZERO_ONE, "source": "--mean/--std"}, input_shape=None,
                                       required=True, tflite="no", accuracy_check=False)
    with temp_work_dir() as work:
        result = optimize_model(req, Path(work))
    assert result.stages[0]["n"] == len(result.val) == 50 and result.input.source == "--mean/--std"


def test_alternatives_renormalise_the_same_pixels():
    """The common preprocessings are tried from the tensors in use: pixels are recovered exactly."""
    from edgecls.data import Preprocess
    from edgecls.preprocessing import alternatives
    pixels = np.random.default_rng(0).random((4, 3, 5, 5)).astype(np.float32)
    imagenet = Preprocess(size=(5, 5))
    x = (pixels - np.reshape(imagenet.mean, (1, 3, 1, 1))) / np.reshape(imagenet.std, (1, 3, 1, 1))
    alt = dict(alternatives(x.astype(np.float32), imagenet))
    assert len(alt) == 7  # 4 common x RGB/BGR, less the one in use
    np.testing.assert_allclose(alt["--mean 0 --std 1 (pixels 0..1)"], pixels, atol=1e-6)
    np.testing.assert_allclose(alt["--mean 0 --std 1 --channel-order BGR (pixels 0..1)"], pixels[:, ::-1], atol=1e-6)
    np.testing.assert_allclose(alt["--mean 0.5 --std 0.5 (pixels -1..1)"], pixels * 2 - 1, atol=1e-5)


def test_far_below_the_stated_accuracy_stops():
    y = np.arange(270) % 10
    pred = y.copy()
    pred[:54] = (pred[:54] + 1) % 10  # 80 % right, 95 % CI up to ~84.6 %
    x = np.zeros((270, 1, 2, 2), np.float32)
    with pytest.raises(UsageError, match=r"far below the 95 % expected \(--expected-accuracy\)"):
        check_preprocessing(pred, x, y, 10, None, "data", expected=95)
    check_preprocessing(pred, x, y, 10, None, "data", expected=88)  # within the interval and margin
    check_preprocessing(pred, x, y, 10, None, "data")


def test_torchscript_user_model_compiles_with_its_saved_preprocessing_and_full_split(user, tmp_path):
    """No --input-shape, no --mean/--std: model.preprocess.json beside the model is picked up and
    recorded; the original and the artifact are both measured on all 300 --val-data images."""
    shutil.copy(user / "model.pt", tmp_path / "model.pt")
    (tmp_path / "model.preprocess.json").write_text(json.dumps(ZERO_ONE))
    out = tmp_path / "art"
    p = edgecls("compile", tmp_path / "model.pt", "--target", "x86-host", "--val-data", user / "val300",
                "--max-accuracy-drop", "1.5", "--no-tflite", "-o", out)
    assert p.returncode == 0, p.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["model"]["input"]["shape"] == [1, 1, 32, 32] and m["preprocess"]["mean"] == [0.0]
    assert m["options"]["preprocess_from"] == f"{tmp_path / 'model.preprocess.json'} (saved with the model)"
    assert "first conv" in m["options"]["input_shape_from"]
    original, compiled = m["stages"][0], m["stages"][-1]
    assert original["n"] == compiled["n"] == 300 and original["top1"] >= 0.9
    assert compiled["how"] == "edgecls-runner (native)" and compiled["carried"]["n"] == 64
    assert abs(compiled["top1"] - original["top1"]) <= 1 / 300 + 1e-9  # fp32: the same answers
    assert np.load(out / "reference" / "val_x.npy").shape == (64, 1, 32, 32)
    assert len(set(np.load(out / "reference" / "val_y.npy").tolist())) == 10  # carried batch covers every class
    gate = m["acceptance"]
    assert gate["accepted"] and gate["n"] == 300 and gate["lost"] + gate["gained"] <= 1
    assert gate["ci95_points"][0] < gate["drop_points"] < gate["ci95_points"][1]
    printed = " ".join(p.stdout.split())  # rich wraps at the terminal width
    assert "accuracy gate: top-1 drop" in printed and "on 300 validation images" in printed


def test_gate_interval_and_the_split_it_needs():
    # 270 images, 10 lost and 2 gained: drop 2.96 points, Bonett-Price interval by hand.
    ok = np.ones(270, bool)
    new = ok.copy()
    new[:10] = False
    orig = ok.copy()
    orig[10:12] = False
    d = paired_drop(orig, new)
    p12, p21 = 11 / 272, 3 / 272
    half = 1.959963984540054 * np.sqrt((p12 + p21 - (p12 - p21) ** 2) / 272)
    assert (d["n"], d["lost"], d["gained"], d["drop_points"]) == (270, 10, 2, 2.963)
    assert d["ci95_points"] == pytest.approx([(p12 - p21 - half) * 100, (p12 - p21 + half) * 100], abs=1e-3)
    # The carried 64 images cannot decide a 2-point gate (one image is 1.56 points); 137 can.
    assert images_needed(2.0) == 137 and too_small(137, 2.0) is None
    assert "needs at least 137 images" in too_small(64, 2.0) and "no split" in too_small(1000, 0)
    y = np.zeros(64, np.int64)
    undecided = acceptance(y, y, y, 2.0)
    assert undecided["accepted"] is False and undecided["decided"] is False and undecided["n"] == 64


def test_a_split_too_small_for_the_gate_is_refused_before_any_work(user, tmp_path):
    # 300 images split 70/15/15 per class (21/4/5): 50 validation images cannot tell 2 points.
    p = edgecls("compile", user / "model.pth", "--target", "x86-host", "--data", user / "val300", "--quantize", "ptq",
                "--mean", "0", "--std", "1", "--max-accuracy-drop", "2", "-o", tmp_path / "a")
    _one_line_error(p, "cannot be decided on 50 validation images", "at least 137 images", "nothing was optimized")
    # --val-data of 64 images: refused after reading them, before TVM.
    small = tmp_path / "val64"
    x = np.stack([np.zeros((1, 32, 32), np.float32)] * 64)
    small.mkdir()
    np.save(small / "val_x.npy", x)
    np.save(small / "val_y.npy", np.zeros(64, np.int64))
    p = edgecls("compile", user / "model.pt", "--target", "x86-host", "--val-data", small, "--accept-low-accuracy",
                "--max-accuracy-drop", "2", "-o", tmp_path / "b")
    _one_line_error(p, "cannot be decided on 64 validation images")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
