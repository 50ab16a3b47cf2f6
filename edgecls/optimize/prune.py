"""Structured (channel) pruning with torch-pruning's dependency graph (DepGraph).

Whole output channels are removed from every Conv/Linear and from everything coupled to them:
the BatchNorm after a conv, the next layer's input channels, a depthwise conv (whose input and
output channels are the same channels), and every branch that meets at a residual add. The result
is a physically smaller model (smaller weight tensors, fewer MACs), not a masked one, so it stays
smaller after ONNX export and TVM compilation.

`ratio` is the fraction of channels removed from each prunable group (torch-pruning's
`pruning_ratio`, local ranking: every layer loses the same share of its channels). Removing half
of the channels of consecutive layers removes about three quarters of the MACs between them; the
first conv's input (the image) and the classifier's output (the logits) keep their width.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgecls.errors import EdgeclsError, UsageError

IMPORTANCES = ("magnitude", "taylor", "bn-scale")


@dataclass
class PruneResult:
    model: nn.Module
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    ignored_layers: list[str]  # module names left unpruned (always the classifier head)

    @property
    def params_ratio(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0

    @property
    def macs_ratio(self) -> float:
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"params_before": self.params_before, "params_after": self.params_after,
                "macs_before": self.macs_before, "macs_after": self.macs_after,
                "params_ratio": round(self.params_ratio, 4), "macs_ratio": round(self.macs_ratio, 4),
                "ignored_layers": list(self.ignored_layers)}


def check_ratio(ratio: Any) -> float:
    """The pruning ratio as a float in [0, 1), or a one-line UsageError."""
    ok = isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and math.isfinite(ratio)
    if not ok or not 0.0 <= float(ratio) < 1.0:
        raise UsageError(f"--prune {ratio} must be a number in [0, 1) "
                         "(the fraction of channels removed from each layer, e.g. 0.5)")
    return float(ratio)


def _as_tuple(example_input) -> tuple:
    return tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)


def count_macs_params(model: nn.Module, example_input) -> tuple[int, int]:
    """(MACs, parameters) for one forward pass on `example_input` (torch-pruning's op counter)."""
    import torch_pruning as tp

    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, _as_tuple(example_input))
    return int(macs), int(params)


def _prunable_types() -> tuple[type, ...]:
    return (nn.modules.conv._ConvNd, nn.Linear)


def find_head(model: nn.Module, example_input) -> list[nn.Module]:
    """The layer that produces the logits: the last Conv/Linear called in a forward pass.

    Its output channels are the classes, so it must never lose any (its input channels may still
    shrink with the layer before it).
    """
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, _i, _o: order.append(mod))
             for m in model.modules() if isinstance(m, _prunable_types())]
    try:
        with torch.no_grad():
            model(*_as_tuple(example_input))
    finally:
        for h in hooks:
            h.remove()
    return [order[-1]] if order else []


def _importance(name: str):
    import torch_pruning as tp

    if name == "magnitude":
        # Group L2 norm over every coupled layer (conv weights, BN scales, consumer inputs).
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "taylor":
        # |w * dL/dw| summed over the group: needs gradients (see calib_batches).
        return tp.importance.GroupTaylorImportance()
    if name == "bn-scale":
        # |gamma| of the BatchNorms in the group (network slimming).
        return tp.importance.BNScaleImportance()
    raise UsageError(f"unknown pruning importance {name!r}; choose one of {', '.join(IMPORTANCES)}")


def _make_pruner_class():
    import torch_pruning as tp

    class _Pruner(tp.pruner.BasePruner):
        def _round_to(self, n_pruned, current_channels, round_to):
            # torch-pruning rounds the kept channels *down* to a multiple of round_to, which can
            # leave 0 channels (8 channels at ratio 0.5 keep 4 -> 0) and delete a whole layer's
            # output. Keep at least one multiple, and leave layers no wider than round_to as
            # they are: they are already one SIMD vector wide.
            if current_channels <= round_to:
                return 0
            keep = max(round_to, (current_channels - n_pruned) // round_to * round_to)
            return max(current_channels - keep, 0)

    return _Pruner


def _accumulate_gradients(model: nn.Module, calib_batches: Iterable) -> int:
    """Backpropagate cross-entropy over (x, y) batches so Taylor importance has dL/dw."""
    model.zero_grad(set_to_none=True)
    n = 0
    with torch.enable_grad():
        for batch in calib_batches:
            try:
                x, y = batch
            except (TypeError, ValueError):
                raise UsageError("calib_batches must yield (images, labels) pairs") from None
            x, y = torch.as_tensor(x), torch.as_tensor(y).long()
            nn.functional.cross_entropy(model(x), y).backward()
            n += 1
    return n


def prune_model(model: nn.Module, example_input, ratio: float, importance: str = "magnitude",
                round_to: int | None = 8, calib_batches: Iterable | None = None,
                ignored_layers: list[nn.Module] | None = None) -> PruneResult:
    """Remove `ratio` of the channels of every prunable layer group; returns a pruned deep copy.

    `model` is left untouched. `example_input` is one input batch (a tensor or a tuple of
    tensors) used to trace the dependency graph and count MACs. `importance` ranks channels:
    "magnitude" (group L2 norm), "taylor" (|w * grad|, needs `calib_batches`: a few (x, y)
    batches, e.g. from the calibration split) or "bn-scale" (|BatchNorm gamma|). `round_to`
    keeps channel counts multiples of 8 (SIMD friendly on NEON/AVX); None keeps exact counts.
    The classifier head (the layer producing the logits) and `ignored_layers` keep their output
    channels.
    """

    ratio = check_ratio(ratio)
    if importance not in IMPORTANCES:
        raise UsageError(f"unknown pruning importance {importance!r}; choose one of {', '.join(IMPORTANCES)}")
    if round_to is not None and (not isinstance(round_to, int) or isinstance(round_to, bool) or round_to < 1):
        raise UsageError(f"round_to must be a positive integer or None, got {round_to!r}")
    if importance == "taylor" and calib_batches is None:
        raise UsageError("taylor importance needs calib_batches: a few (images, labels) batches for gradients")

    was_training = model.training
    pruned = copy.deepcopy(model).eval()
    example = _as_tuple(example_input)
    macs_before, params_before = count_macs_params(pruned, example)
    with torch.no_grad():
        out_before = pruned(*example)

    names = {m: n for n, m in pruned.named_modules()}
    # The caller's modules map to their copies by name.
    own = {m: n for n, m in model.named_modules()}
    extra = []
    for m in ignored_layers or []:
        if m not in own:
            raise UsageError(f"ignored layer {type(m).__name__} is not a module of the model being pruned")
        extra.append(pruned.get_submodule(own[m]))
    ignored = list(dict.fromkeys(find_head(pruned, example) + extra))

    if ratio > 0:
        imp = _importance(importance)
        if importance == "taylor" and _accumulate_gradients(pruned, calib_batches) == 0:
            raise UsageError("taylor importance needs at least one calibration batch, got none")
        try:
            pruner = _make_pruner_class()(pruned, example, importance=imp, pruning_ratio=ratio,
                                          ignored_layers=ignored, round_to=round_to)
            for group in pruner.step(interactive=True):
                if any(len(idxs) for _dep, idxs in group):
                    group.prune()
        finally:
            pruned.zero_grad(set_to_none=True)

    with torch.no_grad():
        out_after = pruned(*example)
    if tuple(out_after.shape) != tuple(out_before.shape):
        raise EdgeclsError(f"pruning changed the model's output shape from {tuple(out_before.shape)} "
                           f"to {tuple(out_after.shape)}; add the output layer to ignored_layers")
    macs_after, params_after = count_macs_params(pruned, example)
    pruned.train(was_training)
    return PruneResult(model=pruned, params_before=params_before, params_after=params_after,
                       macs_before=macs_before, macs_after=macs_after,
                       ignored_layers=[names[m] for m in ignored])
