"""Shared fixtures: real models (digits demo trained here, reference nets), real TVM artifacts.

Artifacts are session-scoped: a TVM build costs seconds, and many tests read the same one.
"""

from __future__ import annotations

import atexit
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecls.demo import ensure_demo_model
from edgecls.export import onnx as onnx_export
from edgecls.models import MobileNetV2, ResNet18
from edgecls.pipeline import CompileRequest, compile_artifact

# Compiles apply the default tuning database when one exists: keep the user's out of the tests.
os.environ["EDGECLS_TUNING_DB"] = tempfile.mkdtemp(prefix="edgecls-test-tuning-")
atexit.register(shutil.rmtree, os.environ["EDGECLS_TUNING_DB"], ignore_errors=True)  # one per xdist worker

REF_SIZE = 64  # reference nets at 64x64: same layer plan and fusion as 224, 12x cheaper under qemu


EDGECLS = str(Path(sys.executable).parent / "edgecls")  # the CLI of the venv running the tests


def edgecls(*args, env: dict | None = None, inherit_env: bool = True, cwd=None, timeout: float = 900):
    """Run the real `edgecls` CLI in its own process, as a user would; never raises on failure.

    env: variables set on top of this process's environment, or instead of it (inherit_env=False:
    a bare environment, e.g. a PATH without some tool)."""
    full_env = {**os.environ, **env} if (env and inherit_env) else env
    if env and not inherit_env and "PYTHONPATH" in os.environ:  # a bare environment, the same code under test
        full_env = {"PYTHONPATH": os.environ["PYTHONPATH"], **env}
    return subprocess.run([EDGECLS, *map(str, args)], capture_output=True, text=True, env=full_env, cwd=cwd,
                          timeout=timeout)


def has_aarch64_toolchain() -> bool:
    return bool(shutil.which("aarch64-linux-gnu-g++") and shutil.which("qemu-aarch64"))


needs_aarch64 = pytest.mark.skipif(not has_aarch64_toolchain(),
                                   reason="aarch64 cross compiler or qemu-user not installed (scripts/setup installs them)")


# ISA-specific code is compiled for an explicit x86 CPU, never for the host's, and its machine code
# is checked whatever the host is; it runs only where the host has the features it was built for
# (sessions and CI run on Zen 3 with AVX2 and on Zen 4/5 with AVX-512 VNNI). Each CPU name with the
# /proc/cpuinfo flags of its x86-64 psABI level (v3: AVX2, v4: AVX-512) and of its extensions.
X86_CPU_FLAGS = {
    "znver3": {"avx", "avx2", "fma", "bmi1", "bmi2", "f16c", "movbe", "abm"},
    "skylake-avx512": {"avx", "avx2", "fma", "bmi1", "bmi2", "f16c", "movbe", "abm",
                       "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"},
    "cascadelake": {"avx", "avx2", "fma", "bmi1", "bmi2", "f16c", "movbe", "abm",
                    "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx512_vnni"},
}


def host_cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((x for x in text.splitlines() if x.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def host_runs(mcpu: str) -> bool:
    """True when this host can execute code LLVM compiled for `mcpu`."""
    return X86_CPU_FLAGS[mcpu] <= host_cpu_flags()


def needs_host_cpu(mcpu: str):
    return pytest.mark.skipif(not host_runs(mcpu), reason=f"this host's CPU cannot run code built for {mcpu} "
                              f"(needs {' '.join(sorted(X86_CPU_FLAGS[mcpu] - host_cpu_flags()))})")


def x86_target(mcpu: str) -> dict:
    """A TVM target dict for an explicit x86 CPU, with this machine's cores."""
    return {"kind": "llvm", "mcpu": mcpu, "num-cores": len(os.sched_getaffinity(0))}


def _randomize_bn(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    # Non-trivial BN statistics, so a wrong BN fold shows up as a numeric difference.
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean = torch.randn(n, generator=g) * 0.1
            m.running_var = torch.rand(n, generator=g) + 0.5
    return model.eval()


def export_onnx(model: torch.nn.Module, shape, path: Path, keep_bn: bool = False) -> Path:
    x = torch.zeros(shape)
    if keep_bn:
        # The TorchScript exporter without constant folding keeps BatchNormalization nodes, like
        # ONNX files from other exporters: our TVM passes must fold them.
        buf = io.BytesIO()
        onnx_export.export_onnx(model, x, buf, torchscript=True, fold_constants=False)
        path.write_bytes(buf.getvalue())
    else:
        onnx_export.export_onnx(model, x, path, named=False)
    return path


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    return ensure_demo_model(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="session")
def ref_models(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("refnets")
    shape = (1, 3, REF_SIZE, REF_SIZE)
    mnv2 = _randomize_bn(MobileNetV2(num_classes=10), 1)
    resnet = _randomize_bn(ResNet18(num_classes=10), 2)
    return {
        "mobilenet_v2": export_onnx(mnv2, shape, d / "mobilenet_v2.onnx"),
        "resnet18": export_onnx(resnet, shape, d / "resnet18.onnx"),
        "mobilenet_v2_bn": export_onnx(mnv2, shape, d / "mobilenet_v2_bn.onnx", keep_bn=True),
    }


# conv 3->8 3x3 at 16x16, conv 8->16 3x3 stride 2 (8x8 out), linear 16->10
NET_MACS = 16 * 16 * 8 * 3 * 9 + 8 * 8 * 16 * 8 * 9 + 16 * 10
NET_PARAMS = (8 * 3 * 9 + 8) + (16 * 8 * 9 + 16) + (16 * 10 + 10)


class SmallNet(torch.nn.Module):
    """Two convolutions and a linear layer at 16x16: the kinds of MAC graph_facts counts, and a
    model ORT's quantize_static takes in a second (tests of variants and reports)."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, width, 3, padding=1)
        self.c2 = torch.nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(2 * width, 10)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(x.mean((2, 3)))


def small_net_onnx(path: Path, seed: int = 0, width: int = 8) -> Path:
    torch.manual_seed(seed)
    onnx_export.export_onnx(SmallNet(width).eval(), torch.zeros(1, 3, 16, 16), path, named=False)
    return path


def quantize_static_ort(src: Path, dst: Path, *, qdq: bool = True, per_channel: bool = True,
                        activations: str = "int8") -> Path:
    """ONNX Runtime's own quantizer, as a user quantizing outside edgecls would call it."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    name = onnx.load(str(src)).graph.input[0].name
    rng = np.random.default_rng(0)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{name: rng.random((1, 3, 16, 16), np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ if qdq else QuantFormat.QOperator,
                    per_channel=per_channel,
                    activation_type=QuantType.QInt8 if activations == "int8" else QuantType.QUInt8)
    return dst


class Artifacts:
    """Compile on first use, keep for the session."""

    def __init__(self, root: Path, demo, ref_models):
        self.root, self.demo, self.ref = root, demo, ref_models
        self.cache: dict[tuple, Path] = {}

    def get(self, model: str, target: str, layout: str = "auto") -> Path:
        key = (model, target, layout)
        if key not in self.cache:
            out = self.root / f"{model}-{target}-{layout}"
            if model == "digits":
                from edgecls.data import Preprocess
                import json
                req = CompileRequest(model=self.demo.onnx, target=target, out_dir=out, layout=layout,
                                     labels=self.demo.labels, val_data=self.demo.dir,
                                     preprocess=Preprocess.from_dict(json.loads(self.demo.preprocess.read_text())))
            else:
                req = CompileRequest(model=self.ref[model], target=target, out_dir=out, layout=layout)
            self.cache[key] = compile_artifact(req)
        return self.cache[key]


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory, demo, ref_models):
    return Artifacts(tmp_path_factory.mktemp("artifacts"), demo, ref_models)


def ort_run(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    from edgecls.artifact.reference import onnx_session
    sess = onnx_session(onnx_path)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])
