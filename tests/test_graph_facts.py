"""Graph facts (edgecls/compile/graph_facts.py): MACs, parameters and the variant read from ONNX
graphs as other tools make them -- ORT's quantize_static (QDQ and integer kernels, per-channel and
per-tensor, u8 and s8 activations), quantize_dynamic, fp16 weights -- with no TVM involved."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import NET_MACS, NET_PARAMS, quantize_static_ort, small_net_onnx

from edgecls.compile.graph_facts import graph_facts, variant_name

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


def test_float_weights_behind_quantize_linear(net, tmp_path):
    """Float weights -> QuantizeLinear -> DequantizeLinear (left unfolded by some exporters): int8."""
    import onnx
    from onnx import helper, numpy_helper
    q = onnx.load(str(quantize_static_ort(net, tmp_path / "q.onnx", per_channel=False)))
    inits = {i.name: i for i in q.graph.initializer}
    for node in list(q.graph.node):
        if node.op_type == "DequantizeLinear" and inits.get(node.input[0]) is not None \
                and inits[node.input[0]].data_type == onnx.TensorProto.INT8:
            w = inits[node.input[0]]
            scale = numpy_helper.to_array(inits[node.input[1]])
            q.graph.initializer.remove(w)
            q.graph.initializer.append(numpy_helper.from_array(
                numpy_helper.to_array(w).astype("float32") * scale, w.name + "_f"))
            q.graph.node.insert(0, helper.make_node("QuantizeLinear", [w.name + "_f", node.input[1], node.input[2]],
                                                    [w.name]))
    facts = graph_facts(q)
    assert facts["variant"] == "int8-static-pertensor-s8" and facts["params"] == NET_PARAMS


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
