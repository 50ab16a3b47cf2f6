"""x86 VNNI int8 kernels (schedules/x86_vnni.py, isa/x86_vnni.py): compiled for an explicit VNNI
CPU (cascadelake: AVX-512 + AVX512-VNNI) whatever the host is, their machine code read (vpdpbusd,
no vpmaddubsw), and run only where the host has VNNI: bit for bit against the plain integer rule
and against a numpy integer reference, on QDQ files from stock `quantize_static` (U8S8 per
channel, full-range int8 weights, which AVX2's byte pairs cannot take).
"""

from __future__ import annotations

import subprocess

import numpy as np
import onnx
import pytest
import torch

from conftest import host_runs, quantize_static_ort, small_net_onnx, x86_target
from edgecls.compile import tvm as ta
from edgecls.compile.tvm.schedules.isa import eight_bit_kernels
from edgecls.export import onnx as onnx_export
from edgecls.targets import get_target

VNNI = "cascadelake"


def _skip_unless_host_runs(mcpu: str) -> None:
    if not host_runs(mcpu):
        pytest.skip(f"machine code checked; this host's CPU cannot run code built for {mcpu} (no AVX512-VNNI)")


def _builds(path, shape, tmp_path, mcpu: str = VNNI):
    """{"vnni": the integer build, "plain": the same without the int8 intrinsics} of a QDQ file for `mcpu`."""
    model = onnx.load(str(path))
    tt = ta.resolve_target(x86_target(mcpu))
    fused, records = ta.run_graph_passes(ta.import_onnx(model, model.graph.input[0].name, shape), tt, "NHWC", int8=True)
    assert records[0].name == "QuantizeInt8"
    libs = {k: tmp_path / f"{mcpu}-{k}.so" for k in ("vnni", "plain")}
    ta.build(fused, tt, libs["vnni"], get_target("x86-host").compiler)
    with ta.widening_disabled():
        ta.build(fused, tt, libs["plain"], get_target("x86-host").compiler)
    return libs


@pytest.mark.parametrize("mcpu, vnni", [("cascadelake", True), ("icelake-server", True), ("znver4", True),
                                         ("alderlake", True), ("znver3", False), ("skylake-avx512", False)])
def test_vnni_follows_the_target(mcpu, vnni):
    """AVX512-VNNI (+VL) or AVX-VNNI: uint8 inputs for every weight range; otherwise AVX2's byte pairs."""
    tvm = ta.load_tvm()
    assert ta.has_vnni(tvm.target.Target({"kind": "llvm", "mcpu": mcpu})) == vnni
    assert eight_bit_kernels({"kind": "llvm", "mcpu": mcpu}) == ("u8_vnni" if vnni else "u8")
    assert not ta.has_vnni(tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76"}))


def test_full_range_stock_qdq_runs_on_vpdpbusd(tmp_path):
    """Stock quantize_static (U8S8, per channel, full-range weights): every regular conv takes
    vpdpbusd over c4-packed weights; nothing multiplies byte pairs (vpmaddubsw would saturate);
    equal bit for bit to the plain integer rule where the host runs it."""
    src = small_net_onnx(tmp_path / "net.onnx", width=16)
    qdq = quantize_static_ort(src, tmp_path / "net.qdq.onnx", activations="uint8")
    w = [onnx.numpy_helper.to_array(i) for i in onnx.load(str(qdq)).graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert max(np.abs(a.astype(np.int16)).max() for a in w) > 64  # beyond AVX2 byte pairs' [-64, 64]
    libs = _builds(qdq, (1, 3, 16, 16), tmp_path)
    mnemonics = ta.kernel_mnemonics(libs["vnni"])
    assert len(ta.widened_kernels(libs["vnni"], "x86_vnni", extra=("vpbroadcastd",))) == 2  # conv 3->16, 16->32
    assert not any("vpmaddubsw" in ops for ops in mnemonics.values())
    assert not ta.widened_kernels(libs["plain"], "x86_vnni")
    _skip_unless_host_runs(VNNI)
    x = np.random.default_rng(0).random((20, 3, 16, 16), np.float32)
    assert np.array_equal(ta.run_host_library(libs["vnni"], x), ta.run_host_library(libs["plain"], x))


def _single_conv_qdq(tmp_path, cin: int, cout: int, size: int):
    """A 3x3 conv (padding 1) + ReLU, quantized by stock quantize_static (U8S8, per channel)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 3, padding=1), torch.nn.ReLU()).eval()
    src = tmp_path / "conv.onnx"
    onnx_export.export_onnx(net, torch.zeros(1, cin, size, size), src, named=False)
    name = onnx.load(str(src)).graph.input[0].name
    rng = np.random.default_rng(1)
    batches = iter([{name: rng.standard_normal((1, cin, size, size)).astype(np.float32)} for _ in range(4)])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(batches, None)

    dst = tmp_path / "conv.qdq.onnx"
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return dst


def _numpy_reference(qdq_path, x_q: np.ndarray) -> np.ndarray:
    """The QDQ conv + ReLU in integers: sum_k (x_k - z_x) w_k + bias (exact int64), requantized by
    float32 M = s_x s_w / s_y with round-half-even, clamped at the ReLU, dequantized."""
    model = onnx.load(str(qdq_path))
    init = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    x_dq, w_dq, b_dq = (dq[i] for i in conv.input)
    s_x, z_x = float(init[x_dq.input[1]]), int(init[x_dq.input[2]])
    w_q, s_w = init[w_dq.input[0]].astype(np.int64), init[w_dq.input[1]].astype(np.float64)
    bias = init[b_dq.input[0]].astype(np.int64)
    q_out = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == conv.output[0])
    s_y, z_y = float(init[q_out.input[1]]), int(init[q_out.input[2]])
    xc = np.pad(x_q.astype(np.int64) - z_x, [(0, 0), (0, 0), (1, 1), (1, 1)])  # padding: real 0.0
    n, _, h, w = x_q.shape
    patches = np.stack([xc[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)], -1)  # n c h w 9
    acc = np.einsum("nchwt,oct->nohw", patches, w_q.reshape(*w_q.shape[:2], 9)) + bias[None, :, None, None]
    mult = (s_x * s_w / s_y).astype(np.float32)[None, :, None, None]
    y = np.clip(np.round(acc.astype(np.float32) * mult) + z_y, max(0, z_y), 255)
    return ((y - z_y) * np.float32(s_y)).astype(np.float32), s_x, z_x


def test_vnni_conv_matches_numpy_integer_reference(tmp_path):
    """One 3x3 conv 64 -> 64 over full-range weights (the zero point of the uint8 input folded into
    the bias): the vpdpbusd kernel's output equals a numpy integer reference."""
    qdq = _single_conv_qdq(tmp_path, 64, 64, 14)
    libs = _builds(qdq, (1, 64, 14, 14), tmp_path)
    assert len(ta.widened_kernels(libs["vnni"], "x86_vnni")) == 1
    _skip_unless_host_runs(VNNI)
    rng = np.random.default_rng(2)
    x_q = rng.integers(0, 256, (4, 64, 14, 14))
    want, s_x, z_x = _numpy_reference(qdq, x_q)
    x = ((x_q - z_x) * np.float32(s_x)).astype(np.float32)  # on the grid: quantizes back to x_q
    got = ta.run_host_library(libs["vnni"], x)
    assert np.array_equal(got, want), np.abs(got - want).max()


def test_avx_vnni_without_avx512_takes_vex_vpdpbusd_on_ymm(tmp_path):
    """alderlake (AVX-VNNI, no AVX-512): the same kernels, VEX-encoded vpdpbusd on ymm only
    (objdump writes "{vex} vpdpbusd"; kernel_mnemonics reads the mnemonic past that prefix). The
    host here has no AVX-VNNI to run it: machine code only."""
    src = small_net_onnx(tmp_path / "net.onnx", width=16)
    qdq = quantize_static_ort(src, tmp_path / "net.qdq.onnx", activations="uint8")
    libs = _builds(qdq, (1, 3, 16, 16), tmp_path, mcpu="alderlake")
    assert len(ta.widened_kernels(libs["vnni"], "x86_vnni")) == 2
    text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(libs["vnni"])], capture_output=True,
                          text=True, check=True).stdout
    lines = [ln for ln in text.splitlines() if "vpdpbusd" in ln]
    assert lines and all("{vex}" in ln and "%ymm" in ln and "%zmm" not in ln for ln in lines)
