"""Fine-tuning after pruning: knowledge distillation from the unpruned model plus cross-entropy.

The loss is `alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE`,
with label smoothing in the cross-entropy and inverse-frequency class weights when the fine-tune
set is imbalanced. AdamW with a one-cycle schedule (warm-up then cosine decay); the weights of the
epoch with the best validation top-1 are kept. Runs on the CPU, deterministic for a given seed and
thread count (the thread count changes float summation order).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecls.data import Dataset
from edgecls.torch_state import deterministic_torch
from edgecls.errors import UsageError

# Class weights only when the largest class has this many times the images of the smallest.
IMBALANCE_RATIO = 1.5


@dataclass
class FinetuneResult:
    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)  # one {epoch, loss, val_top1, ...} per epoch
    best_val_top1: float = 0.0
    best_epoch: int = 0  # 0: the weights before fine-tuning were the best
    class_weights: list[float] | None = None
    seconds: float = 0.0


def _num_classes(ds: Dataset) -> int:
    return max(len(ds.classes), int(ds.y.max()) + 1 if len(ds) else 0)


@torch.no_grad()
def _logits(model: nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    x = torch.as_tensor(x)
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)


def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 256) -> dict[str, float | None]:
    """Top-1 and top-5 accuracy (fractions) on `dataset`; top-5 is None with 5 classes or fewer."""
    if len(dataset) == 0:
        raise UsageError("cannot evaluate on an empty dataset")
    logits = _logits(model, dataset.x, batch_size)
    y = torch.as_tensor(dataset.y).long()
    top1 = float((logits.argmax(1) == y).float().mean())
    top5 = None
    if _num_classes(dataset) > 5 and logits.shape[1] > 5:
        top5 = float((logits.topk(5, dim=1).indices == y[:, None]).any(1).float().mean())
    return {"top1": top1, "top5": top5}


def class_weights(y: np.ndarray, num_classes: int) -> torch.Tensor | None:
    """Inverse-frequency weights (mean 1 over present classes) when max/min count > 1.5, else None."""
    counts = np.bincount(np.asarray(y, np.int64), minlength=num_classes).astype(np.float64)
    present = counts > 0
    if present.sum() < 2 or counts[present].max() / counts[present].min() <= IMBALANCE_RATIO:
        return None
    w = np.zeros(num_classes)
    w[present] = 1.0 / counts[present]
    w[present] *= present.sum() / w[present].sum()
    return torch.tensor(w, dtype=torch.float32)


def _check(name: str, value, ok: bool, want: str) -> None:
    if not ok:
        raise UsageError(f"fine-tune {name} must be {want}, got {value!r}")


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _validate(train: Dataset, val: Dataset, epochs, lr, batch_size, temperature, alpha, label_smoothing,
              threads) -> None:
    _check("epochs", epochs, isinstance(epochs, int) and not isinstance(epochs, bool) and epochs >= 1,
           "an integer >= 1")
    _check("lr", lr, _is_num(lr) and lr > 0, "a positive number")
    _check("batch_size", batch_size, isinstance(batch_size, int) and batch_size >= 1, "an integer >= 1")
    _check("temperature", temperature, _is_num(temperature) and temperature > 0, "a positive number")
    _check("alpha", alpha, _is_num(alpha) and 0 <= alpha <= 1, "in [0, 1]")
    _check("label_smoothing", label_smoothing, _is_num(label_smoothing) and 0 <= label_smoothing < 1, "in [0, 1)")
    _check("threads", threads, isinstance(threads, int) and threads >= 1, "an integer >= 1")
    if len(train) == 0 or len(val) == 0:
        raise UsageError(f"fine-tune needs images in both sets, got {len(train)} training and {len(val)} validation")
    if list(train.classes) != list(val.classes):
        raise UsageError("fine-tune and validation sets have different classes")


def finetune(student: nn.Module, teacher: nn.Module | None, train: Dataset, val: Dataset, epochs: int,
             lr: float = 3e-3, batch_size: int = 32, temperature: float = 4.0, alpha: float = 0.7,
             label_smoothing: float = 0.1, seed: int = 0, threads: int = 1, weight_decay: float = 1e-4,
             progress: Callable[[dict[str, Any]], None] | None = None) -> FinetuneResult:
    """Train `student` (in place) on `train`, distilling from `teacher` when given.

    Without a teacher (or with alpha=0) the loss is cross-entropy only. `progress`, when given,
    is called after every epoch with {"epoch", "epochs", "loss", "val_top1", "best_val_top1",
    "lr", "seconds"}. Returns the student with the best-validation weights loaded, in eval mode.
    Global torch state (threads, deterministic mode, RNG) is restored afterwards.
    """
    _validate(train, val, epochs, lr, batch_size, temperature, alpha, label_smoothing, threads)
    num_classes = _num_classes(train)
    t0 = time.perf_counter()

    with deterministic_torch(threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        result = _train(student, teacher, train, val, epochs, lr, batch_size, temperature, alpha,
                        label_smoothing, seed, weight_decay, num_classes, progress)
    result.seconds = time.perf_counter() - t0
    return result


def _train(student, teacher, train, val, epochs, lr, batch_size, temperature, alpha, label_smoothing,
           seed, weight_decay, num_classes, progress) -> FinetuneResult:
    gen = torch.Generator().manual_seed(seed)
    x_all = torch.as_tensor(train.x)
    y_all = torch.as_tensor(train.y).long()
    n = len(train)

    kd = teacher is not None and alpha > 0
    # The teacher is frozen and there is no augmentation, so its logits are the same every
    # epoch: compute them once instead of a teacher forward pass per batch.
    teacher_logits = _logits(teacher, x_all) if kd else None
    weights = class_weights(train.y, num_classes)
    ce = nn.CrossEntropyLoss(weight=weights, label_smoothing=label_smoothing)
    kl = nn.KLDivLoss(reduction="batchmean", log_target=True)
    t = float(temperature)

    steps_per_epoch = (n + batch_size - 1) // batch_size
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                pct_start=0.15, anneal_strategy="cos")

    # The starting point counts as a candidate: fine-tuning must never return something worse.
    best_top1 = evaluate(student, val)["top1"]
    best_state = copy.deepcopy(student.state_dict())
    best_epoch = 0
    history: list[dict[str, Any]] = []
    for epoch in range(1, epochs + 1):
        te = time.perf_counter()
        student.train()
        perm = torch.randperm(n, generator=gen)
        total, seen = 0.0, 0
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            out = student(x_all[idx])
            loss = ce(out, y_all[idx])
            if kd:
                soft = kl(torch.log_softmax(out / t, 1), torch.log_softmax(teacher_logits[idx] / t, 1))
                loss = alpha * (t * t) * soft + (1 - alpha) * loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        top1 = evaluate(student, val)["top1"]
        if top1 > best_top1:
            best_top1, best_epoch = top1, epoch
            best_state = copy.deepcopy(student.state_dict())
        entry = {"epoch": epoch, "loss": total / seen, "val_top1": top1}
        history.append(entry)
        if progress is not None:
            progress({**entry, "epochs": epochs, "best_val_top1": best_top1,
                      "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - te})

    student.load_state_dict(best_state)
    student.eval()
    return FinetuneResult(model=student, history=history, best_val_top1=best_top1, best_epoch=best_epoch,
                          class_weights=None if weights is None else [float(w) for w in weights])
