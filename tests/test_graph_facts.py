"""Graph facts (edgecls/compile/graph_facts.py): MACs, parameters and the variant read from ONNX
graphs as other tools make them -- ORT's quantize_static (QDQ and integer kernels, per-channel and
per-tensor, u8 and s8 activations), quantize_dynamic, fp16 weights -- with no TVM involved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgecls.compile.graph_facts import graph_facts, variant_name

# conv 3->8 3x3 at 16x16, conv 8->16 3x3 stride 2 (8x8 out), linear 16->10
NET_MACS = 16 * 16 * 8 * 3 * 9 + 8 * 8 * 16 * 8 * 9 + 16 * 10
NET_PARAMS = (8 * 3 * 9 + 8) + (16 * 8 * 9 + 16) + (16 * 10 + 10)


class SmallNet(torch.nn.Module):
    """Two convolutions and a linear layer: every kind of MAC the counter knows, at 16x16."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(x.mean((2, 3)))


def small_net_onnx(path: Path, seed: int = 0) -> Path:
    from edgecls.export.onnx import export_onnx
    torch.manual_seed(seed)
    export_onnx(SmallNet().eval(), torch.zeros(1, 3, 16, 16), path, named=False)
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


@pytest.fixture(scope="module")
def net(tmp_path_factory) -> Path:
    return small_net_onnx(tmp_path_factory.mktemp("facts") / "net.onnx")


def test_fp32_macs_and_params(net):
    facts = graph_facts(net)
    assert facts["macs"] == NET_MACS and facts["params"] == NET_PARAMS and facts["macs_unknown_nodes"] == 0
    assert facts["quantization"] == {"precision": "fp32"} and facts["variant"] == "fp32"


@pytest.mark.parametrize("qdq, per_channel, activations, variant", [
    (True, True, "int8", "int8-static-perchannel-s8"),
    (True, False, "uint8", "int8-static-pertensor-u8"),
    (False, False, "uint8", "int8-static-pertensor-u8"),  # QLinearConv / QGemm integer kernels
])
def test_quantize_static_is_int8_with_how(net, tmp_path, qdq, per_channel, activations, variant):
    q = quantize_static_ort(net, tmp_path / "q.onnx", qdq=qdq, per_channel=per_channel, activations=activations)
    facts = graph_facts(q)
    # Same MACs; the same weight count (scales and zero points are not parameters).
    assert facts["macs"] == NET_MACS and facts["params"] == NET_PARAMS
    assert facts["variant"] == variant
    assert facts["quantization"]["format"] == ("qdq" if qdq else "integer-kernels")


def test_quantize_dynamic_and_fp16_weights(net, tmp_path):
    from onnxruntime.quantization import quantize_dynamic

    from edgecls.optimize.fp16 import fp16_weights_onnx
    quantize_dynamic(str(net), str(tmp_path / "dyn.onnx"))
    dyn = graph_facts(tmp_path / "dyn.onnx")
    assert dyn["quantization"]["how"] == "dynamic" and dyn["variant"].startswith("int8-dynamic")
    fp16_weights_onnx(net, tmp_path / "fp16.onnx")
    half = graph_facts(tmp_path / "fp16.onnx")
    assert half["variant"] == "fp16" and half["params"] == NET_PARAMS and half["macs"] == NET_MACS


def test_variant_name_takes_pruning_and_qat_from_the_stages():
    int8 = {"precision": "int8", "how": "static", "weights": "per-channel", "activations": "u8"}
    stages = [{"stage": "original"}, {"stage": "pruned", "ratio": 0.5}, {"stage": "fine-tuned"},
              {"stage": "quantized", "method": "qat"}]
    assert variant_name(int8, stages) == "pruned50-int8-qat-perchannel-u8"
    assert variant_name(int8, [{"stage": "quantized", "method": "ptq-minmax"}]) == "int8-static-perchannel-u8"
    assert variant_name({"precision": "fp32"}, stages[:2]) == "pruned50-fp32"
    assert variant_name({"precision": "fp16", "how": "weights"}) == "fp16"


def test_variant_label_is_checked_in_one_line():
    from edgecls.errors import UsageError
    from edgecls.pipeline import check_variant_label
    check_variant_label("int8-mine_v2.1")
    for bad in ("rk1:int8", "a/b", "", "with space"):
        with pytest.raises(UsageError, match=r"^--variant '.*': use up to 40 letters"):
            check_variant_label(bad)
