"""Images in, float32 tensors out: one preprocessing path for training, calibration and validation.

Everything that turns pixels into model input goes through `_normalise`, so the digits demo
tensors, a PNG read back from disk and a user's ImageFolder are bit-for-bit comparable.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edgecls.errors import EdgeclsError, UsageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

# What PIL raises for truncated, corrupt or hostile files. DecompressionBombError is not an
# OSError, SyntaxError comes from some plugins' header parsers.
_PIL_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Preprocess:
    """How raw pixels become model input; stored in the artifact manifest so the board matches."""

    size: tuple[int, int] = (224, 224)  # (H, W)
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)  # per channel, in 0..1 pixel scale, channel_order
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    channel_order: str = "RGB"
    layout: str = "NCHW"
    resize: str = "bilinear"

    def __post_init__(self):
        # Coerce lists (from JSON) to tuples so the frozen dataclass stays hashable.
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.size) != 2 or min(self.size) < 1:
            raise UsageError(f"preprocess size must be two positive integers (H, W), got {self.size}")
        if len(self.mean) not in (1, 3) or len(self.std) != len(self.mean):
            raise UsageError(f"preprocess mean/std must both have 1 or 3 values, got mean={self.mean} std={self.std}")
        if any(not math.isfinite(s) or s <= 0 for s in self.std):
            raise UsageError(f"preprocess std values must be positive, got {self.std}")
        if self.channel_order not in ("RGB", "BGR"):
            raise UsageError(f"preprocess channel_order must be RGB or BGR, got {self.channel_order!r}")
        if self.layout not in ("NCHW", "NHWC"):
            raise UsageError(f"preprocess layout must be NCHW or NHWC, got {self.layout!r}")
        if self.resize != "bilinear":
            raise UsageError(f"preprocess resize must be 'bilinear', got {self.resize!r}")

    @property
    def channels(self) -> int:
        return len(self.mean)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        h, w = self.size
        c = self.channels
        return (1, c, h, w) if self.layout == "NCHW" else (1, h, w, c)

    def to_dict(self) -> dict[str, Any]:
        return {"size": list(self.size), "mean": list(self.mean), "std": list(self.std),
                "channel_order": self.channel_order, "layout": self.layout, "resize": self.resize}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocess":
        if not isinstance(d, dict):
            raise UsageError(f"preprocess must be a JSON object, got {type(d).__name__}")
        unknown = sorted(set(d) - {"size", "mean", "std", "channel_order", "layout", "resize"})
        if unknown:
            raise UsageError(f"preprocess has unknown keys: {', '.join(unknown)}")
        try:
            return cls(**d)
        except (TypeError, ValueError) as e:
            raise UsageError(f"invalid preprocess {d}: {e}") from None


DEMO_PREPROCESS = Preprocess(size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                             channel_order="RGB", layout="NCHW", resize="bilinear")


@dataclass
class Dataset:
    """Preprocessed images (N, C, H, W) or (N, H, W, C) float32, labels (N,) int64, class names."""

    x: np.ndarray
    y: np.ndarray
    classes: list[str]
    preprocess: Preprocess
    skipped: int = 0
    skipped_files: list[str] = field(default_factory=list)
    paths: list[str] | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx: np.ndarray) -> "Dataset":
        paths = None if self.paths is None else [self.paths[i] for i in idx]
        return Dataset(self.x[idx], self.y[idx], list(self.classes), self.preprocess, paths=paths)


def _normalise(pixels: np.ndarray, pre: Preprocess) -> np.ndarray:
    """uint8 pixels (N, H, W, C) in RGB (or gray) order -> float32 model input in `pre`'s order/layout."""
    x = pixels.astype(np.float32) / np.float32(255.0)
    if pre.channel_order == "BGR" and x.shape[-1] == 3:
        x = x[..., ::-1]
    x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    if pre.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=np.float32)


def _load_pixels(src: str | os.PathLike | Image.Image, pre: Preprocess) -> np.ndarray:
    """Decode + colour-convert + resize to uint8 (H, W, C); EdgeclsError naming the file on failure."""
    name = "<PIL image>" if isinstance(src, Image.Image) else str(src)
    try:
        if isinstance(src, Image.Image):
            img = src
        else:
            with Image.open(src) as f:
                f.load()  # force decoding now so truncated files fail here, not later
                img = f.copy()
        # torchvision's loader does convert("RGB") (drops alpha, expands gray/palette); match it.
        img = img.convert("RGB" if pre.channels == 3 else "L")
        h, w = pre.size
        if img.size != (w, h):
            img = img.resize((w, h), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
    except _PIL_ERRORS as e:
        raise EdgeclsError(f"cannot read image {name}: {e}") from None
    return arr[..., None] if arr.ndim == 2 else arr


def preprocess_image(src: str | os.PathLike | Image.Image, pre: Preprocess) -> np.ndarray:
    """One image -> float32 array with batch dim, (1, C, H, W) or (1, H, W, C) per `pre.layout`."""
    return _normalise(_load_pixels(src, pre)[None], pre)


def _class_images(d: Path) -> list[Path]:
    # Recursive like torchvision's ImageFolder; hidden files/dirs (.DS_Store, checkpoints) ignored.
    out = []
    for p in sorted(d.rglob("*")):
        rel = p.relative_to(d).parts
        if any(part.startswith(".") for part in rel):
            continue
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            out.append(p)
    return out


def load_image_folder(root: str | os.PathLike, pre: Preprocess, *, limit: int | None = None) -> Dataset:
    """Load `root/<class_name>/*.{png,jpg,jpeg,bmp,webp}`; classes sorted by name, label = index.

    `limit` caps the total number of images, taken round-robin over classes so a small
    calibration subset still covers every class. Unreadable images are skipped and counted.
    """
    root = Path(root)
    if not root.exists():
        raise EdgeclsError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise EdgeclsError(f"image folder {root} is not a directory")
    if limit is not None and limit < 1:
        raise UsageError(f"image limit must be >= 1, got {limit}")
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    if not entries:
        raise EdgeclsError(f"image folder {root} is empty")
    class_dirs = [p for p in entries if p.is_dir()]
    if not class_dirs:
        raise EdgeclsError(f"image folder {root} has no class folders (expected {root}/<class_name>/<image>)")
    per_class: list[list[Path]] = []
    for d in class_dirs:
        files = _class_images(d)
        if not files:
            raise EdgeclsError(f"class folder {d} has no images ({'/'.join(IMAGE_EXTENSIONS)})")
        per_class.append(files)

    chosen: list[tuple[int, Path]] = []
    if limit is None:
        chosen = [(c, p) for c, files in enumerate(per_class) for p in files]
    else:
        for i in range(max(len(f) for f in per_class)):
            chosen += [(c, files[i]) for c, files in enumerate(per_class) if i < len(files)]
            if len(chosen) >= limit:
                break
        chosen = sorted(chosen[:limit])  # back to (class, file) order

    pixels, labels, paths, skipped = [], [], [], []
    for c, p in chosen:
        try:
            pixels.append(_load_pixels(p, pre))
        except EdgeclsError:
            skipped.append(str(p))
            continue
        labels.append(c)
        paths.append(str(p))
    if not pixels:
        raise EdgeclsError(f"none of the {len(chosen)} images in {root} could be read (first: {skipped[0]})")
    x = _normalise(np.stack(pixels), pre)
    return Dataset(x, np.asarray(labels, np.int64), [d.name for d in class_dirs], pre,
                   skipped=len(skipped), skipped_files=skipped, paths=paths)


def split(dataset: Dataset, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
          seed: int = 0) -> tuple[Dataset, Dataset, Dataset]:
    """Deterministic stratified split into (fine-tune, calibration, validation).

    Each class is shuffled with `seed` and cut by `fractions`, so every split keeps the class
    balance; each split is then shuffled so taking its first k images still mixes classes.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise UsageError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    for c in np.unique(dataset.y):
        idx = rng.permutation(np.flatnonzero(dataset.y == c))
        n = len(idx)
        n0 = int(round(n * fractions[0]))
        n1 = min(n - n0, int(round(n * fractions[1])))
        parts[0] += idx[:n0].tolist()
        parts[1] += idx[n0:n0 + n1].tolist()
        parts[2] += idx[n0 + n1:].tolist()
    return tuple(dataset.subset(rng.permutation(np.asarray(p, np.int64))) for p in parts)  # type: ignore[return-value]


def _digits_pixels(size: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn digits (8x8, 0..16) -> uint8 (N, size, size) gray images + int64 labels.

    Quantised to uint8 on purpose: that is exactly what a PNG stores, so the ImageFolder copy
    and the in-memory dataset give identical tensors.
    """
    import torch
    from sklearn.datasets import load_digits

    if not isinstance(size, int) or size < 1:
        raise UsageError(f"digits image size must be a positive integer, got {size!r}")

    d = load_digits()
    imgs = torch.from_numpy(d.images.astype(np.float32) * (255.0 / 16.0))[:, None]
    if size != 8:
        imgs = torch.nn.functional.interpolate(imgs, size=(size, size), mode="bilinear", align_corners=False)
    px = imgs[:, 0].numpy().round().clip(0, 255).astype(np.uint8)
    return px, d.target.astype(np.int64)


def digits_dataset(size: int = 32, channels: int = 3) -> Dataset:
    """The 1797 real labelled scikit-learn digits, upsampled to size x size, demo-normalised."""
    if channels not in (1, 3):
        raise UsageError(f"digits channels must be 1 or 3, got {channels}")
    pre = Preprocess(size=(size, size), mean=(0.5,) * channels, std=(0.5,) * channels,
                     channel_order="RGB", layout="NCHW")
    px, y = _digits_pixels(size)
    px = np.repeat(px[..., None], channels, axis=-1)
    return Dataset(_normalise(px, pre), y, [str(i) for i in range(10)], pre)


def write_digits_image_folder(out_dir: str | os.PathLike, size: int = 32, *, mode: str = "RGB") -> Path:
    """Write the digits as `<out>/<digit>/<index>.png` (mode "RGB" or "L"); atomic via temp dir + rename.

    Fails if `out_dir` already exists and is non-empty, rather than mixing with other files.
    """
    if mode not in ("RGB", "L"):
        raise UsageError(f"image mode must be RGB or L, got {mode!r}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EdgeclsError(f"{out} already exists and is not an empty directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    px, y = _digits_pixels(size)
    # Temp dir next to the target so the final rename stays on one filesystem.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for c in range(10):
            (tmp / str(c)).mkdir()
        for i, (img, label) in enumerate(zip(px, y)):
            Image.fromarray(img).convert(mode).save(tmp / str(label) / f"{i:04d}.png")
        if out.exists():
            out.rmdir()  # empty (checked above); os.replace cannot overwrite a directory
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
