"""The bundled demo model: DigitsCNN trained on real scikit-learn digits, on CPU, in seconds.

It gives every command (compile, bench, report) and the test suite a real trained classifier
with a held-out validation set, without downloading weights.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecls.hashing import sha256_file
from edgecls.export.onnx import export_onnx
from edgecls.quiet import quiet_torch_export
from edgecls.torch_state import deterministic_torch
from edgecls.data import DEMO_PREPROCESS, digits_dataset, split
from edgecls.errors import EdgeclsError

ONNX_NAME = "digits_cnn.onnx"
PT2_NAME = "digits_cnn.pt2"
MODULE_NAME = "digits_cnn.pth"
LABELS_NAME = "labels.txt"
PREPROCESS_NAME = "preprocess.json"
VAL_X_NAME = "val_x.npy"
VAL_Y_NAME = "val_y.npy"
MARKER_NAME = "demo.json"
_FILES = (ONNX_NAME, PT2_NAME, MODULE_NAME, LABELS_NAME, PREPROCESS_NAME, VAL_X_NAME, VAL_Y_NAME)

# Bump when training or export changes so stale caches are rebuilt instead of reused.
DEMO_VERSION = 2
DEFAULT_EPOCHS = 6


@dataclass(frozen=True)
class DemoModel:
    dir: Path
    onnx: Path
    pt2: Path
    module: Path  # torch.save(model): the trained nn.Module, for pruning and QAT
    labels: Path
    preprocess: Path
    val_x: Path
    val_y: Path
    val_accuracy: float
    train_seconds: float


def _atomic_write(path: Path, write) -> None:
    # Write to a sibling temp file then rename: a killed run never leaves a half file that
    # a later ensure_demo_model() could mistake for a good one.
    # The temp name keeps the real suffix: torch.export.save warns unless it ends in .pt2.
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=f"-{path.name}", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; cache files should read like normal ones
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_npy(path: str, arr: np.ndarray) -> None:
    # Through a file object: np.save(str) would append ".npy" to the temp name.
    with open(path, "wb") as f:
        np.save(f, arr)


def _sha256(path: Path) -> str:
    return sha256_file(path)


def _model_for(out: Path, marker: dict) -> DemoModel:
    return DemoModel(dir=out, onnx=out / ONNX_NAME, pt2=out / PT2_NAME, module=out / MODULE_NAME, labels=out / LABELS_NAME,
                     preprocess=out / PREPROCESS_NAME, val_x=out / VAL_X_NAME, val_y=out / VAL_Y_NAME,
                     val_accuracy=float(marker["val_accuracy"]),
                     train_seconds=float(marker["train_seconds"]))


def _fit(tune, num_classes: int, epochs: int, seed: int):
    """AdamW + one-cycle LR on the fine-tune split; returns the model in eval mode."""
    import torch
    from torch import nn

    from edgecls.models import DigitsCNN

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = DigitsCNN(num_classes=num_classes, in_channels=DEMO_PREPROCESS.channels)
    x_all, y_all = torch.from_numpy(tune.x), torch.from_numpy(tune.y)
    batch = 32  # small batches: more steps per second of CPU on 1.3k images than 64/128
    steps = epochs * ((len(tune) + batch - 1) // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.2)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(tune), generator=gen)
        for i in range(0, len(tune), batch):
            idx = perm[i:i + batch]
            # Random shift of up to 2 px per batch: digits are not all centred alike, and this is
            # the cheapest augmentation that helps (roll wraps the border, which is nearly all
            # background, so no padding is needed).
            dx, dy = torch.randint(-2, 3, (2,), generator=gen).tolist()
            xb = torch.roll(x_all[idx], shifts=(dy, dx), dims=(2, 3))
            opt.zero_grad(set_to_none=True)
            loss_fn(model(xb), y_all[idx]).backward()
            opt.step()
            sched.step()
    return model.eval()


def train_digits_model(out_dir: str | os.PathLike, *, epochs: int = DEFAULT_EPOCHS, seed: int = 0,
                       threads: int = 1) -> DemoModel:
    """Train DigitsCNN on the fine-tune split of the digits, export ONNX + pt2 + val set into out_dir.

    `threads`: torch intra-op threads. Default 1, measured on a 2-core box: 6 epochs take
    ~21 s with 1 thread whether or not other work is running; 2 threads take ~12 s when the
    box is idle but 30-220 s when another process keeps the cores busy (OpenMP threads wait
    on each other). A steady < 60 s matters more than the best case. The thread count changes
    float summation order, so results are bit-reproducible per thread count.
    """
    import torch

    if epochs < 1 or threads < 1:
        raise EdgeclsError(f"epochs and threads must be >= 1, got epochs={epochs} threads={threads}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Retraining over an old copy: drop its marker first so a crash leaves "incomplete", not "done".
    (out / MARKER_NAME).unlink(missing_ok=True)
    t0 = time.perf_counter()

    ds = digits_dataset(size=DEMO_PREPROCESS.size[0], channels=DEMO_PREPROCESS.channels)
    tune, _calib, val = split(ds, seed=seed)

    # Fixed threads + seeds + deterministic kernels: bit-identical weights run to run.
    # Global torch state is restored afterwards because callers (tests, CLI) share the process;
    # fork_rng keeps our seeding out of the caller's RNG stream.
    with deterministic_torch(threads):
        with torch.random.fork_rng(devices=[]):
            model = _fit(tune, len(ds.classes), epochs, seed)
        with torch.no_grad():
            pred = model(torch.from_numpy(val.x)).argmax(1).numpy()
        val_acc = float((pred == val.y).mean())
        train_seconds = time.perf_counter() - t0

        example = (torch.from_numpy(val.x[:1]),)
        with quiet_torch_export():
            _atomic_write(out / ONNX_NAME, lambda p: export_onnx(model, example[0], p))
            exported = torch.export.export(model, example)
            _atomic_write(out / PT2_NAME, lambda p: torch.export.save(exported, p))
            # The nn.Module itself: pruning and QAT need real modules, not an exported graph.
            _atomic_write(out / MODULE_NAME, lambda p: torch.save(model, p))

    _atomic_write(out / LABELS_NAME, lambda p: Path(p).write_text("\n".join(ds.classes) + "\n"))
    _atomic_write(out / PREPROCESS_NAME,
                  lambda p: Path(p).write_text(json.dumps(DEMO_PREPROCESS.to_dict(), indent=2) + "\n"))
    _atomic_write(out / VAL_X_NAME, lambda p: _save_npy(p, val.x.astype(np.float32)))
    _atomic_write(out / VAL_Y_NAME, lambda p: _save_npy(p, val.y.astype(np.int64)))

    # The marker goes last: its presence (with matching hashes) means the directory is complete.
    marker = {"version": DEMO_VERSION, "epochs": epochs, "seed": seed, "threads": threads,
              "val_accuracy": val_acc, "train_seconds": round(train_seconds, 3), "torch": torch.__version__,
              "files": {name: _sha256(out / name) for name in _FILES}}
    _atomic_write(out / MARKER_NAME, lambda p: Path(p).write_text(json.dumps(marker, indent=2) + "\n"))
    return _model_for(out, marker)


def _load_marker(out: Path, epochs: int, seed: int) -> dict | None:
    try:
        marker = json.loads((out / MARKER_NAME).read_text())
        if (marker.get("version"), marker.get("epochs"), marker.get("seed")) != (DEMO_VERSION, epochs, seed):
            return None
        files = marker["files"]
        if set(files) != set(_FILES) or any(_sha256(out / n) != h for n, h in files.items()):
            return None
        float(marker["val_accuracy"]), float(marker["train_seconds"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return marker


def ensure_demo_model(cache_dir: str | os.PathLike, *, epochs: int = DEFAULT_EPOCHS, seed: int = 0,
                      threads: int = 1) -> DemoModel:
    """Return the demo model in cache_dir, training it first unless a complete copy is there.

    A copy made with another thread count is reused: it differs only in float rounding.
    """
    out = Path(cache_dir)
    marker = _load_marker(out, epochs, seed)
    if marker is not None:
        return _model_for(out, marker)
    return train_digits_model(out, epochs=epochs, seed=seed, threads=threads)


def write_sample_images(demo: DemoModel, out_dir: str | os.PathLike, count: int = 3) -> list[tuple[Path, str]]:
    """A few validation digits as PNG files (what a user would feed `edgecls run --input`)."""
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pre = DEMO_PREPROCESS
    x, y = np.load(demo.val_x), np.load(demo.val_y)
    samples = []
    for i in range(min(count, len(y))):
        # Undo the demo normalisation: pixel = (value * std + mean) * 255.
        img = (x[i].transpose(1, 2, 0) * np.array(pre.std) + np.array(pre.mean)) * 255.0
        path = out / f"digit{i}_label{int(y[i])}.png"
        Image.fromarray(img.round().clip(0, 255).astype(np.uint8)).save(path)
        samples.append((path, str(int(y[i]))))
    return samples
