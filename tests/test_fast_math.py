"""fast_math.py: sigmoid, GELU and Erf legalized with TOPI's fast_exp/fast_erf. The epilogues stay
fused into the conv/matmul that produces them, match float64 references over the whole float
range (clamps included), and compile without a libm call (expf, erff) for an explicit x86 CPU and
for a Cortex-A72; a float16 activation keeps TVM's own legalization."""

from __future__ import annotations

import math
import re
import subprocess

import numpy as np
import pytest
from scipy.special import erf as erf64

from conftest import needs_aarch64, needs_host_cpu, x86_target
from edgecls.compile import tvm as tvm_adapter

tvm = tvm_adapter.load_tvm()
from tvm import relax  # noqa: E402

TARGET = tvm_adapter.resolve_target(x86_target("znver3"))  # AVX2, whatever the host
RK3399 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"], "num-cores": 2}
ACTIVATIONS = {"sigmoid": relax.op.sigmoid, "gelu": relax.op.nn.gelu, "erf": relax.op.erf,
               "silu": lambda y: relax.op.multiply(y, relax.op.sigmoid(y))}
REFERENCES = {"sigmoid": lambda x: 1 / (1 + np.exp(-x)), "gelu": lambda x: x * (0.5 + 0.5 * erf64(x / math.sqrt(2))),
              "erf": erf64, "silu": lambda x: x / (1 + np.exp(-x))}


def _matmul_net(act: str, k: int = 16, n: int = 24, dtype: str = "float32"):
    """x (1, 40, k) @ w (k, n) + b -> activation: a token MLP's first layer (ConvNeXt, ViT)."""
    rng = np.random.default_rng(1)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 40, k), dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, relax.const(rng.standard_normal((k, n)).astype(dtype))))
            y = bb.emit(relax.op.add(y, relax.const(rng.standard_normal(n).astype(dtype))))
            out = bb.emit_output(bb.emit(ACTIVATIONS[act](y)))
        bb.emit_func_output(out)
    return bb.get()


def _elementwise_net(act: str, n: int):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, n), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(ACTIVATIONS[act](x)))
        bb.emit_func_output(out)
    return bb.get()


def _kernels(mod, target=TARGET) -> dict[str, str]:
    fused, _ = tvm_adapter.run_graph_passes(mod, target, layout="NHWC")
    return {g.name_hint: f.script() for g, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}


@pytest.mark.parametrize("act, name", [("sigmoid", "sigmoid"), ("gelu", "gelu"), ("erf", "erf"), ("silu", "sigmoid")])
def test_activation_is_fused_arithmetic_without_exp_or_erf(act, name):
    """One kernel, the matmul with its bias and activation, named as before; its TIR has no exp,
    erf or sigmoid intrinsic left (the approximations are multiplies, adds, a clamp and a shift)."""
    [(kernel, script)] = _kernels(_matmul_net(act)).items()
    assert kernel.startswith("fused_matmul") and name in kernel
    assert not re.search(r"T\.(exp|erf|sigmoid)\(", script)


def test_float16_keeps_tvm_legalization():
    """The approximations' constants and clamps are float32's: a float16 sigmoid is TVM's."""
    [script] = _kernels(_matmul_net("sigmoid", dtype="float16")).values()
    assert "T.sigmoid(" in script


# Values across the float range: the clamps (|x| > 88 for exp, > 4 for erf), 0, tiny, the knees.
_X = np.concatenate([np.linspace(-12, 12, 4001), [-1e4, -100, -90, -88.5, -20, -4.5, -1e-30, 0, 1e-30, 4.5, 20, 88.5, 90, 100, 1e4]])


@needs_host_cpu("znver3")
@pytest.mark.parametrize("act", ["sigmoid", "gelu", "erf", "silu"])
def test_approximations_match_float64(act):
    """Absolute error within 2e-7 x max(1, |x|) (measured: 1.1e-6 for SiLU at x = 11, 7.3e-7 for
    GELU at 5, 2.3e-7 for erf at -3.7) and, but for GELU, 1e-6 relative where the result is not
    tiny (measured 2.3e-7; float32 rounds to 6e-8). GELU's negative tail, x * (1/2 + erf / 2), loses
    its relative accuracy to the cancellation in float32 whatever erf is used."""
    x = _X.astype("float32")[None]
    fused, _ = tvm_adapter.run_graph_passes(_elementwise_net(act, x.shape[1]), TARGET, layout=None)
    executable, _ = tvm_adapter.build_executable(fused, TARGET, schedules=True)
    got = np.asarray(tvm_adapter.load_executable(executable)(x)).astype("float64")[0]
    x64 = x[0].astype("float64")
    with np.errstate(over="ignore"):
        want = REFERENCES[act](x64)
    err = np.abs(got - want)
    assert np.isfinite(got).all()
    assert (err <= 2e-7 * np.maximum(1.0, np.abs(x64))).all(), (act, float(err.max()), float(x64[err.argmax()]))
    if act != "gelu":
        big = np.abs(want) > 1e-3
        assert (err[big] <= 1e-6 * np.abs(want[big])).all(), (act, float((err[big] / np.abs(want[big])).max()))


def _built(act: str, target: dict, compiler: str, objdump: str, tmp_path) -> tuple[str, set[str]]:
    """(disassembly, functions called) of a matmul + activation built for `target`."""
    fused, _ = tvm_adapter.run_graph_passes(_matmul_net(act, k=32, n=64), target, layout="NHWC")
    lib = tmp_path / "model.so"
    tvm_adapter.build(fused, target, lib, compiler)
    text = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(lib)], capture_output=True, text=True,
                          check=True).stdout
    return text, set(re.findall(r"\b(?:call|bl)\s+[0-9a-f]+ <(\w+)(?:@plt)?>", text))


@pytest.mark.parametrize("act", ["silu", "gelu"])
def test_x86_kernel_calls_no_libm(act, tmp_path):
    """Built for znver3: no expf/erff call (TIR's exp and erf made one per lane), and the epilogue's
    divide (sigmoid's 1 / (1 + e), erf's rational function) runs 8 lanes at once."""
    text, calls = _built(act, TARGET, "g++", "objdump", tmp_path)
    assert not {"expf", "erff", "exp", "erf"} & calls
    assert re.search(r"\bvdivps\s+.*%ymm", text)


@needs_aarch64
@pytest.mark.parametrize("act", ["silu", "gelu"])
def test_cortex_a72_kernel_calls_no_libm(act, tmp_path):
    """The same for a Cortex-A72: no libm call, the divide in 4-lane NEON (`fdiv v.4s`)."""
    text, calls = _built(act, RK3399, "aarch64-linux-gnu-g++", "aarch64-linux-gnu-objdump", tmp_path)
    assert not {"expf", "erff", "exp", "erf"} & calls
    assert re.search(r"\bfdiv\s+v\d+\.4s", text)
