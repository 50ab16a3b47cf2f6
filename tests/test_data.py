"""Data loading, preprocessing and the demo model, on the real scikit-learn digits."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from edgecls import demo
from edgecls.data import (DEMO_PREPROCESS, Preprocess, digits_dataset, load_image_folder,
                          preprocess_image, split, write_digits_image_folder)
from edgecls.errors import EdgeclsError, UsageError


@pytest.fixture(scope="module")
def digits():
    return digits_dataset()


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    return write_digits_image_folder(tmp_path_factory.mktemp("imgs") / "digits")


def _index(path: str) -> int:
    # write_digits_image_folder names files by their index in load_digits().
    return int(path.rsplit("/", 1)[-1].split(".")[0])


def _one_line_error(exc_info, *needles):
    msg = str(exc_info.value)
    assert "\n" not in msg and msg
    for n in needles:
        assert str(n) in msg, msg


# -- digits + Preprocess ---------------------------------------------------------------------

def test_digits_dataset_shapes_and_labels(digits):
    assert digits.x.shape == (1797, 3, 32, 32) and digits.x.dtype == np.float32
    assert digits.y.dtype == np.int64 and set(digits.y.tolist()) == set(range(10))
    assert digits.classes == [str(i) for i in range(10)]
    assert np.bincount(digits.y).min() >= 170  # about 180 real images per digit
    # mean/std 0.5 maps 0..1 to -1..1; the background is exactly -1.
    assert digits.x.min() == -1.0 and digits.x.max() == 1.0
    assert np.array_equal(digits.x[:, 0], digits.x[:, 2])  # gray replicated to RGB
    gray = digits_dataset(size=16, channels=1)
    assert gray.x.shape == (1797, 1, 16, 16) and np.array_equal(gray.y, digits.y)


def test_preprocess_dict_round_trip_and_validation():
    d = json.loads(json.dumps(DEMO_PREPROCESS.to_dict()))
    assert Preprocess.from_dict(d) == DEMO_PREPROCESS
    assert DEMO_PREPROCESS.input_shape == (1, 3, 32, 32)
    for bad in ({"layout": "CHW"}, {"channel_order": "RGBA"}, {"std": (0.0, 1.0, 1.0)},
                {"mean": (0.5, 0.5)}, {"size": (32,)}, {"resize": "nearest"}, {"bogus": 1}):
        with pytest.raises(UsageError):
            Preprocess.from_dict({**d, **bad})


# -- ImageFolder -----------------------------------------------------------------------------

def test_image_folder_round_trip(digits, digits_folder):
    ds = load_image_folder(digits_folder, DEMO_PREPROCESS)
    assert len(ds) == 1797 and ds.skipped == 0 and ds.classes == digits.classes
    idx = np.array([_index(p) for p in ds.paths])
    assert sorted(idx.tolist()) == list(range(1797))
    assert np.array_equal(ds.y, digits.y[idx])
    np.testing.assert_allclose(ds.x, digits.x[idx], atol=1e-6, rtol=0)


def test_grayscale_pngs_become_rgb(digits, tmp_path):
    out = write_digits_image_folder(tmp_path / "gray", mode="L")
    assert Image.open(next((out / "0").iterdir())).mode == "L"
    ds = load_image_folder(out, DEMO_PREPROCESS, limit=50)
    assert ds.x.shape == (50, 3, 32, 32)
    np.testing.assert_allclose(ds.x, digits.x[[_index(p) for p in ds.paths]], atol=1e-6, rtol=0)


def test_limit_is_round_robin_over_classes(digits_folder):
    ds = load_image_folder(digits_folder, DEMO_PREPROCESS, limit=25)
    assert len(ds) == 25 and np.bincount(ds.y, minlength=10).min() >= 2
    with pytest.raises(UsageError):
        load_image_folder(digits_folder, DEMO_PREPROCESS, limit=0)


def test_preprocess_image_equals_dataset_tensor(digits, digits_folder):
    png = sorted((digits_folder / "7").iterdir())[3]
    i = _index(str(png))
    x = preprocess_image(png, DEMO_PREPROCESS)
    assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], digits.x[i], atol=1e-6, rtol=0)
    np.testing.assert_allclose(preprocess_image(Image.open(png), DEMO_PREPROCESS), x, atol=0, rtol=0)
    nhwc = Preprocess(**{**DEMO_PREPROCESS.to_dict(), "layout": "NHWC"})
    assert np.array_equal(preprocess_image(str(png), nhwc)[0], x[0].transpose(1, 2, 0))


def test_preprocess_channel_order_and_resize(tmp_path):
    p = tmp_path / "c.png"
    Image.new("RGB", (64, 48), (255, 0, 51)).save(p)
    pre = Preprocess(size=(8, 8), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    rgb = preprocess_image(p, pre)
    assert rgb.shape == (1, 3, 8, 8)
    np.testing.assert_allclose(rgb[0, :, 0, 0], [1.0, 0.0, 0.2], atol=1e-6)
    bgr = preprocess_image(p, Preprocess(**{**pre.to_dict(), "channel_order": "BGR", "mean": (0.1, 0, 0)}))
    np.testing.assert_allclose(bgr[0, :, 0, 0], [0.1, 0.0, 1.0], atol=1e-6)  # mean is in BGR order too
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(tmp_path / "a.png")
    assert preprocess_image(tmp_path / "a.png", pre).shape == (1, 3, 8, 8)


def test_corrupt_images_skipped_and_counted(tmp_path, digits_folder):
    root = tmp_path / "mixed"
    for c in ("0", "1"):
        (root / c).mkdir(parents=True)
        for png in sorted((digits_folder / c).iterdir())[:5]:
            shutil.copy(png, root / c / png.name)
    (root / "0" / "garbage.jpg").write_bytes(b"not an image at all")
    good = (root / "1" / sorted(p.name for p in (root / "1").iterdir())[0]).read_bytes()
    (root / "1" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "1" / "notes.txt").write_text("ignored: not an image extension")
    ds = load_image_folder(root, DEMO_PREPROCESS)
    assert len(ds) == 10 and ds.skipped == 2 and np.bincount(ds.y).tolist() == [5, 5]
    assert sorted(p.rsplit("/", 1)[-1] for p in ds.skipped_files) == ["garbage.jpg", "truncated.png"]
    with pytest.raises(EdgeclsError) as e:
        preprocess_image(root / "0" / "garbage.jpg", DEMO_PREPROCESS)
    _one_line_error(e, "garbage.jpg")


def test_image_folder_errors(tmp_path):
    with pytest.raises(EdgeclsError) as e:
        load_image_folder(tmp_path / "nope", DEMO_PREPROCESS)
    _one_line_error(e, tmp_path / "nope", "does not exist")

    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgeclsError) as e:
        load_image_folder(tmp_path / "empty", DEMO_PREPROCESS)
    _one_line_error(e, "empty")

    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (4, 4)).save(flat / "x.png")
    with pytest.raises(EdgeclsError) as e:
        load_image_folder(flat, DEMO_PREPROCESS)
    _one_line_error(e, "no class folders")

    root = tmp_path / "hole"
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    Image.new("RGB", (4, 4)).save(root / "cat" / "x.png")
    (root / "dog" / "readme.txt").write_text("no images here")
    with pytest.raises(EdgeclsError) as e:
        load_image_folder(root, DEMO_PREPROCESS)
    _one_line_error(e, root / "dog", "no images")

    bad = tmp_path / "bad"
    for c in ("a", "b"):
        (bad / c).mkdir(parents=True)
        (bad / c / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(EdgeclsError) as e:
        load_image_folder(bad, DEMO_PREPROCESS)
    _one_line_error(e, "none of the 2 images")


def test_write_digits_folder_is_atomic_and_refuses_non_empty(tmp_path, digits_folder):
    with pytest.raises(EdgeclsError):
        write_digits_image_folder(digits_folder)
    assert not [p for p in digits_folder.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
    assert sorted(p.name for p in digits_folder.iterdir()) == [str(i) for i in range(10)]


# -- split -----------------------------------------------------------------------------------

def test_split_deterministic_and_stratified(digits):
    a = split(digits, seed=0)
    b = split(digits, seed=0)
    c = split(digits, seed=1)
    assert [len(s) for s in a] == [1258, 269, 270]
    for s, t in zip(a, b):
        assert np.array_equal(s.x, t.x) and np.array_equal(s.y, t.y)
    assert not np.array_equal(a[2].y, c[2].y)
    # Disjoint and complete: the three splits partition the data set.
    flat = np.concatenate([s.x.reshape(len(s), -1) for s in a])
    assert len(np.unique(flat, axis=0)) == len(np.unique(digits.x.reshape(1797, -1), axis=0))
    assert sum(len(s) for s in a) == 1797
    per_class = np.bincount(digits.y)
    for s, f in zip(a, (0.7, 0.15, 0.15)):
        assert np.all(np.abs(np.bincount(s.y, minlength=10) - per_class * f) <= 1)
    assert len(set(a[1].y[:10].tolist())) > 3  # shuffled: the first images mix classes
    with pytest.raises(UsageError):
        split(digits, (0.5, 0.5, 0.5))


# -- the demo model --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_model(request):
    # conftest's session `demo` fixture is ensure_demo_model(<fresh tmp dir>), i.e.
    # train_digits_model with the defaults; reusing it saves the suite a second ~21 s training
    # run. No wall-clock assert: a busy CI box would make it flaky.
    m = request.getfixturevalue("demo")
    marker = json.loads((m.dir / "demo.json").read_text())
    assert (marker["epochs"], marker["seed"]) == (demo.DEFAULT_EPOCHS, 0)
    return m


def test_demo_model_trains_and_exports(demo_model):
    m = demo_model
    assert m.val_accuracy >= 0.95
    assert m.labels.read_text().split() == [str(i) for i in range(10)]
    assert Preprocess.from_dict(json.loads(m.preprocess.read_text())) == DEMO_PREPROCESS
    val_x, val_y = np.load(m.val_x), np.load(m.val_y)
    _, _, val = split(digits_dataset(), seed=0)
    assert val_x.dtype == np.float32 and val_y.dtype == np.int64
    assert np.array_equal(val_x, val.x) and np.array_equal(val_y, val.y)
    assert json.loads((m.dir / "demo.json").read_text())["val_accuracy"] == m.val_accuracy


def test_demo_onnx_matches_torch(demo_model):
    import onnxruntime as ort
    import torch

    m = demo_model
    x, y = np.load(m.val_x), np.load(m.val_y)
    # One thread each: 270 batch-1 calls are too small to parallelise, and on a busy box
    # multi-threaded spin-waiting made this test 30x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            mod = torch.export.load(m.pt2).module()
            torch_pred = np.array([mod(torch.from_numpy(x[i:i + 1])).argmax(1).item() for i in range(len(x))])
    finally:
        torch.set_num_threads(threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(m.onnx), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    assert sess.get_inputs()[0].shape == [1, 3, 32, 32]
    ort_pred = np.array([sess.run(None, {name: x[i:i + 1]})[0].argmax() for i in range(len(x))])
    assert np.array_equal(ort_pred, torch_pred)
    assert (ort_pred == y).mean() == pytest.approx(m.val_accuracy)


def test_ensure_demo_model_reuses_complete_cache(demo_model, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(demo, "train_digits_model", lambda out, **kw: calls.append(out) or "retrained")
    again = demo.ensure_demo_model(demo_model.dir)
    assert again == demo_model and not calls
    copy = tmp_path / "copy"
    shutil.copytree(demo_model.dir, copy)
    (copy / "val_y.npy").write_bytes(b"tampered")
    assert demo.ensure_demo_model(copy) == "retrained" and calls == [copy]
    (copy / "demo.json").unlink()
    assert demo.ensure_demo_model(tmp_path / "fresh") == "retrained"
