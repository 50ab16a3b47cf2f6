"""The --max-accuracy-drop gate: decided on the full validation split, with a 95 % interval.

The original and the compiled artifact are measured on the same images, so the drop is a paired
difference: only the images one gets right and the other wrong count (`lost`, `gained`). Its 95 %
interval is Bonett and Price's adjusted Wald interval for paired proportions (Statistics in
Medicine 31, 2012: add one to each discordant count and two to n), which stays honest when no
image changed, where the plain Wald interval has width zero.

The gate decides on the measured drop, and refuses to decide when the split is too small for the
threshold: when even a result with no image changed would have an interval wider than the
threshold, one or two images decide it (64 carried images: one image is 1.56 points). That
depends only on the number of images and the threshold, so it is checked before any work.
"""

from __future__ import annotations

import math

import numpy as np

from edgecls.errors import UsageError

Z95 = 1.959963984540054  # two-sided 95 % normal quantile


def paired_drop(original_ok: np.ndarray, compiled_ok: np.ndarray) -> dict:
    """Drop in top-1 points from original to compiled on the same images, and its 95 % interval."""
    original_ok, compiled_ok = np.asarray(original_ok, bool), np.asarray(compiled_ok, bool)
    n = int(original_ok.size)
    lost = int((original_ok & ~compiled_ok).sum())
    gained = int((~original_ok & compiled_ok).sum())
    p_lost, p_gained = (lost + 1) / (n + 2), (gained + 1) / (n + 2)
    d = p_lost - p_gained
    half = Z95 * math.sqrt(max(p_lost + p_gained - d * d, 0.0) / (n + 2))
    return {"n": n, "lost": lost, "gained": gained, "drop_points": round((lost - gained) / n * 100, 3),
            "ci95_points": [round(max(d - half, -1.0) * 100, 3), round(min(d + half, 1.0) * 100, 3)]}


def best_case_half_width(n: int) -> float:
    """Half-width in points of the 95 % interval when no image changed: the finest the split can tell."""
    return Z95 * math.sqrt(2.0) / (n + 2) * 100


def images_needed(threshold: float) -> int:
    """The fewest images on which a drop of `threshold` points can be told from no change at all."""
    if threshold == 0:
        return math.inf
    return max(1, math.ceil(Z95 * math.sqrt(2.0) * 100 / abs(threshold)) - 2)


def too_small(n: int, threshold: float | None) -> str | None:
    """Why `n` images cannot decide a `threshold`-point gate, or None when they can."""
    if threshold is None or n >= images_needed(threshold):
        return None
    finest = best_case_half_width(n)
    need = images_needed(threshold)
    more = "no split can decide a 0-point gate" if threshold == 0 else f"it needs at least {need} images"
    return (f"--max-accuracy-drop {threshold:g} cannot be decided on {n} validation images: even with no image "
            f"changed, the 95 % interval of the drop is +-{finest:.2f} points ({more}); give more labelled images "
            f"(a larger --data, --val or --val-data) or a threshold of at least {math.ceil(finest * 100) / 100:g}")


def require_decidable(n: int, threshold: float | None) -> None:
    """Before minutes of work: a UsageError when the split is too small for the threshold."""
    reason = too_small(n, threshold)
    if reason:
        raise UsageError(reason + "; nothing was optimized or written")


def acceptance(original_pred: np.ndarray | None, compiled_pred: np.ndarray | None, y: np.ndarray | None,
               max_drop: float | None) -> dict:
    """The gate's record: accepted or not, on how many images, the drop and its interval."""
    if max_drop is None:
        return {"accepted": True, "max_accuracy_drop": None}
    if original_pred is None or compiled_pred is None or y is None:
        return {"accepted": False, "max_accuracy_drop": max_drop,
                "reason": "--max-accuracy-drop needs validation data (--data or --val-data) and a runnable artifact"}
    y = np.asarray(y)
    stats = paired_drop(np.asarray(original_pred) == y, np.asarray(compiled_pred) == y)
    out = {"max_accuracy_drop": max_drop, **stats, "original_top1": float((np.asarray(original_pred) == y).mean()),
           "compiled_top1": float((np.asarray(compiled_pred) == y).mean())}
    undecidable = too_small(stats["n"], max_drop)
    if undecidable:
        return {"accepted": False, "decided": False, **out, "reason": undecidable}
    lo, hi = stats["ci95_points"]
    ok = stats["drop_points"] <= max_drop
    out.update(accepted=ok, decided=True, conclusive=hi <= max_drop if ok else lo > max_drop)
    if not ok:
        out["reason"] = (f"top-1 fell {stats['drop_points']:.2f} points (95 % CI {lo:.2f} to {hi:.2f}) on "
                         f"{stats['n']} validation images ({out['original_top1']:.4f} -> {out['compiled_top1']:.4f}; "
                         f"{stats['lost']} lost, {stats['gained']} gained), more than --max-accuracy-drop {max_drop:g}")
    return out
