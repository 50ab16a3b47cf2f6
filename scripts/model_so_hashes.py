#!/usr/bin/env python3
"""SHA-256 of the model.so that `edgecls compile` builds for the reference nets, per target.

The check for a restructuring that must not change what the compiler emits: run it before and
after on the same ONNX files and compare the two JSON files (byte-identical libraries, or the
change is not behaviour-preserving). The nets: MobileNetV2 and ResNet-18 fp32 (edgecls.models,
seeded weights, 224x224) and MobileNetV2 int8 (ONNX Runtime QDQ, seeded calibration), each for
x86-host (this machine's CPU) and rk3399 (cross-compiled), zero-trial schedules, no tuning
database. Each compile runs `edgecls compile` in its own process, as a user would.

    .venv/bin/python scripts/model_so_hashes.py --models /tmp/refnets --out before.json
    ... change ...
    .venv/bin/python scripts/model_so_hashes.py --models /tmp/refnets --out after.json
    cmp before.json after.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

EDGECLS = Path(sys.executable).parent / "edgecls"  # the console script of the python running this
TARGETS = ("x86-host", "rk3399")


def make_models(out: Path) -> dict[str, Path]:
    """The reference ONNX files, made once (seeded) and reused by both runs of a comparison."""
    paths = {n: out / f"{n}.onnx" for n in ("mobilenet_v2", "resnet18", "mobilenet_v2_int8")}
    if all(p.exists() for p in paths.values()):
        return paths
    import numpy as np
    import torch

    from edgecls.export.onnx import export_onnx
    from edgecls.models import MobileNetV2, ResNet18
    from edgecls.optimize.quantize import ptq_onnx
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    x = torch.zeros(1, 3, 224, 224)
    for name, net in (("mobilenet_v2", MobileNetV2(num_classes=1000)), ("resnet18", ResNet18(num_classes=1000))):
        export_onnx(net.eval(), x, paths[name], named=False)
    calib = np.random.default_rng(0).standard_normal((32, 3, 224, 224)).astype("float32")
    ptq_onnx(paths["mobilenet_v2"], paths["mobilenet_v2_int8"], calib, "minmax")
    return paths


def model_so_hash(model: Path, target: str, work: Path) -> str:
    out = work / f"{model.stem}-{target}"
    env = dict(os.environ, EDGECLS_TUNING_DB=str(work / "no-tuning-db"))
    cmd = [str(EDGECLS), "compile", str(model), "--target", target, "-o", str(out),
           "--no-verify", "--no-tflite", "--force"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"compile failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return hashlib.sha256((out / "model.so").read_bytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, required=True, help="folder of the reference ONNX files (made if absent)")
    ap.add_argument("--out", type=Path, help="write the JSON here too")
    args = ap.parse_args()
    models = make_models(args.models)
    with tempfile.TemporaryDirectory(prefix="edgecls-hashes-") as tmp:
        hashes = {f"{name}/{target}": model_so_hash(path, target, Path(tmp))
                  for name, path in models.items() for target in TARGETS}
    text = json.dumps(hashes, indent=1, sort_keys=True)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
