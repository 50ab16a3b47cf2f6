"""Structured pruning (torch-pruning DepGraph) + distillation fine-tune, on real models.

The digits demo model (trained weights from the session `demo` fixture's .pt2) is pruned to half
its channels, fine-tuned with its unpruned self as teacher, exported to ONNX and checked against
ONNX Runtime. MobileNetV2 and ResNet18 check depthwise and residual coupling.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import ort_run

from edgecls.data import DEMO_PREPROCESS, Dataset, digits_dataset, split
from edgecls.errors import UsageError
from edgecls.export.onnx import export_onnx
from edgecls.models import DigitsCNN, MobileNetV2, ResNet18
from edgecls.optimize.finetune import class_weights, evaluate, finetune
from edgecls.optimize.prune import prune_model

FINETUNE_EPOCHS = 4  # ~1.3 s each on one core; the pruned model is back at the teacher's top-1 by 3


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def digits(demo):
    # torch.export.load(...).module() is a GraphModule of functional calls, with no nn.Conv2d for
    # torch-pruning to prune, so the trained weights go back into the eager DigitsCNN.
    teacher = DigitsCNN(num_classes=10, in_channels=DEMO_PREPROCESS.channels)
    teacher.load_state_dict(torch.export.load(demo.pt2).state_dict)
    teacher.eval()
    # The same stratified split the demo was trained with (seed 0): fine-tune, calibration, val.
    tune, calib, val = split(digits_dataset(DEMO_PREPROCESS.size[0], DEMO_PREPROCESS.channels), seed=0)
    assert np.array_equal(val.x, np.load(demo.val_x)) and np.array_equal(val.y, np.load(demo.val_y))
    return teacher, tune, calib, val


def _numel(model: torch.nn.Module) -> int:
    return sum(t.numel() for t in model.state_dict().values())


def test_digits_prune_finetune_export(digits, tmp_path):
    teacher, tune, _calib, val = digits
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    base = evaluate(teacher, val)
    x1 = torch.from_numpy(val.x[:1])

    res = prune_model(teacher, x1, 0.5)
    pruned = res.model
    # The caller's model is untouched; the copy is physically smaller, not masked.
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert res.macs_after <= 0.55 * res.macs_before and res.params_after <= 0.55 * res.params_before
    assert _numel(pruned) < 0.55 * _numel(teacher)
    assert pruned.features[0].out_channels == 16 and pruned.features[0].weight.shape == (16, 3, 3, 3)
    dw = pruned.features[6]  # the depthwise conv keeps in == out == groups
    assert dw.in_channels == dw.out_channels == dw.groups == pruned.features[3].out_channels
    assert res.ignored_layers == ["classifier"]
    assert pruned.classifier.out_features == 10 and pruned.classifier.in_features == 64

    epochs_seen = []
    ft = finetune(pruned, teacher, tune, val, epochs=FINETUNE_EPOCHS, seed=0, threads=1,
                  progress=lambda e: epochs_seen.append(e["epoch"]))
    assert epochs_seen == list(range(1, FINETUNE_EPOCHS + 1))
    assert [h["epoch"] for h in ft.history] == epochs_seen
    after = evaluate(ft.model, val)
    assert after["top1"] == pytest.approx(ft.best_val_top1)
    assert after["top1"] == pytest.approx(max([h["val_top1"] for h in ft.history] + [after["top1"]]))
    print(f"digits: MACs {res.macs_before} -> {res.macs_after} ({res.macs_ratio:.3f}x), "
          f"params {res.params_before} -> {res.params_after} ({res.params_ratio:.3f}x), "
          f"top-1 {base['top1']:.4f} -> {after['top1']:.4f} in {ft.seconds:.1f} s")
    assert base["top1"] - after["top1"] <= 0.015
    assert after["top5"] is not None and after["top5"] >= after["top1"]

    # The pruned model exports like any other and ONNX Runtime agrees with torch.
    path = tmp_path / "pruned.onnx"
    export_onnx(ft.model, x1, path, named=False)  # quiet: export_onnx silences the exporter
    xs = val.x[:32]
    with torch.no_grad():
        want = ft.model(torch.from_numpy(xs)).numpy()
    got = ort_run(path, xs)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert (got.argmax(1) == want.argmax(1)).all()


@pytest.mark.parametrize("importance", ["taylor", "bn-scale"])
def test_other_importances(digits, importance):
    teacher, _tune, calib, _val = digits
    x1 = torch.from_numpy(calib.x[:1])
    batches = [(calib.x[i:i + 64], calib.y[i:i + 64]) for i in range(0, 128, 64)]
    res = prune_model(teacher, x1, 0.5, importance=importance, calib_batches=batches)
    assert res.macs_after <= 0.55 * res.macs_before
    assert res.model(torch.from_numpy(calib.x[:4])).shape == (4, 10)
    assert all(p.grad is None for p in res.model.parameters())
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18"])
def test_reference_nets_prune(name):
    torch.manual_seed(0)
    if name == "mobilenet_v2":
        model, head = MobileNetV2(num_classes=10, width=0.5), "classifier.1"
    else:
        model, head = ResNet18(num_classes=10, width=16, small_input=True), "fc"
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    res = prune_model(model, x[:1], 0.5, importance="magnitude", round_to=8)
    assert res.ignored_layers == [head]
    assert res.macs_after <= 0.55 * res.macs_before and res.params_after <= 0.55 * res.params_before
    assert _numel(res.model) < 0.55 * _numel(model)
    with torch.no_grad():
        assert res.model(x).shape == model(x).shape == (2, 10)
    for m in res.model.modules():
        if isinstance(m, torch.nn.Conv2d):
            # round_to=8: every conv a multiple of 8 wide (the input image excepted), none emptied
            assert m.out_channels % 8 == 0 and m.out_channels >= 8
            if m.groups > 1:
                assert m.in_channels == m.out_channels == m.groups


@pytest.mark.parametrize("ratio", [1.2, 1.0, -0.1, math.nan, "0.5", True])
def test_bad_ratio(ratio):
    with pytest.raises(UsageError) as e:
        prune_model(DigitsCNN(), torch.zeros(1, 3, 32, 32), ratio)
    msg = str(e.value)
    assert msg.startswith(f"--prune {ratio} must be") and "\n" not in msg and e.value.exit_code == 2


def test_bad_options():
    model, x = DigitsCNN(), torch.zeros(1, 3, 32, 32)
    with pytest.raises(UsageError, match="calib_batches"):
        prune_model(model, x, 0.5, importance="taylor")
    with pytest.raises(UsageError, match="importance"):
        prune_model(model, x, 0.5, importance="l1")
    ds = Dataset(np.zeros((4, 3, 32, 32), np.float32), np.arange(4) % 2, ["a", "b"], DEMO_PREPROCESS)
    with pytest.raises(UsageError, match="alpha"):
        finetune(model, None, ds, ds, epochs=1, alpha=1.5)


def test_extra_ignored_layers_keep_their_channels():
    model = DigitsCNN()
    res = prune_model(model, torch.zeros(1, 3, 32, 32), 0.5, ignored_layers=[model.features[0]])
    assert res.ignored_layers == ["classifier", "features.0"]
    assert res.model.features[0].out_channels == 32 and res.model.features[3].out_channels == 32
    with pytest.raises(UsageError, match="not a module"):
        prune_model(model, torch.zeros(1, 3, 32, 32), 0.5, ignored_layers=[torch.nn.Linear(2, 2)])


def test_ratio_zero_keeps_the_model(digits):
    teacher, *_ = digits
    res = prune_model(teacher, torch.zeros(1, 3, 32, 32), 0.0)
    assert res.model is not teacher
    assert (res.macs_after, res.params_after) == (res.macs_before, res.params_before)


def test_finetune_is_deterministic_and_class_weighted(digits):
    teacher, tune, _calib, val = digits
    # Imbalanced: class 0 keeps every image, the others a third of theirs.
    keep = np.flatnonzero((tune.y == 0) | (np.arange(len(tune)) % 3 == 0))[:240]
    small = tune.subset(keep)
    w = class_weights(small.y, 10)
    assert w is not None and w[0] < w[1:].min()
    assert class_weights(tune.y, 10) is None  # the stratified split is balanced

    runs = []
    for _ in range(2):
        student = prune_model(teacher, torch.zeros(1, 3, 32, 32), 0.5).model
        runs.append(finetune(student, teacher, small, val.subset(np.arange(64)), epochs=1, seed=3))
    a, b = (r.model.state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert runs[0].history == runs[1].history and runs[0].class_weights is not None


def test_evaluate_top5_only_above_five_classes():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))
    ds = Dataset(np.random.default_rng(0).standard_normal((8, 3, 4, 4)).astype(np.float32),
                 np.arange(8) % 5, list("abcde"), DEMO_PREPROCESS)
    got = evaluate(model, ds)
    assert got["top5"] is None and 0.0 <= got["top1"] <= 1.0
