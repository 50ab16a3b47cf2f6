"""torch -> ONNX: the one place edgecls calls torch.onnx.export.

Two exporters, both used on purpose:
- dynamo (torch.export, the default): what `optimize`, `demo-model` and a .pt2 input use; weights
  inside the file (external_data=False: an artifact ships one model.onnx).
- TorchScript (legacy): a TorchScript input cannot go through torch.export; and without constant
  folding it keeps BatchNormalization nodes, as ONNX files from other exporters do (the tests use
  that to prove edgecls' own passes fold them).
"""

from __future__ import annotations

import io
import os

from edgecls.quiet import quiet_torch_export

IO_NAMES = {"input_names": ["input"], "output_names": ["logits"]}


def export_onnx(model, example, dest: str | os.PathLike | io.BytesIO, *, named: bool = True,
                torchscript: bool = False, fold_constants: bool = True) -> None:
    """Write `model` (an nn.Module or torch.export program) traced on `example` (one tensor) to dest.

    named: input "input" and output "logits" (what edgecls' own models carry); False keeps the
    exporter's names (a user's program). TorchScript exports use opset 17.
    """
    import torch
    names = IO_NAMES if named else {}
    target = dest if isinstance(dest, io.BytesIO) else str(dest)
    if torchscript:
        torch.onnx.export(model, (example,), target, dynamo=False, do_constant_folding=fold_constants,
                          opset_version=17, **names)
        return
    with quiet_torch_export():
        torch.onnx.export(model, (example,), target, dynamo=True, external_data=False, verbose=False, **names)
