"""What an ONNX graph is, read from the graph itself: MACs, parameters, and its numeric variant.

Reports used to take the variant from the optimize options, so an int8 model quantized elsewhere
(ONNX Runtime's quantize_static, NNCF, a vendor tool) was labelled fp32, and MACs were only known
for models edgecls had pruned. Counting from the graph at compile time gives every artifact the
same facts, whoever made the model. Pure ONNX (no TVM): the compile layers keep TVM in compile/tvm.

- MACs: Conv / ConvTranspose / ConvInteger / QLinearConv (output elements x input channels per
  group x kernel area) and Gemm / MatMul / MatMulInteger / QLinearMatMul / QGemm (output elements
  x the reduced dimension), with shapes from onnx shape inference. Elementwise work is not counted.
- params: elements of the weight initializers; scales, zero points and int64 shape constants are
  bookkeeping, not weights.
- variant: int8 when weights are stored as 8-bit integers (QDQ DequantizeLinear, or integer
  kernels), with how (static / dynamic), the weight granularity (per-channel / per-tensor) and
  the activation type (u8 / s8); fp16 when weights are stored as float16; fp32 otherwise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CONV_OPS = {"Conv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3), "ConvTranspose": (0, 1)}
MATMUL_OPS = {"Gemm": (0, 1), "MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3),
              "QGemm": (0, 3)}  # op -> (input A / X, input B / W)
# Inputs that are scales or zero points, by op; other quantized ops (com.microsoft's QLinearAdd ...)
# take them as scalars, recognised by size.
QUANT_PARAM_INPUTS = {"QuantizeLinear": (1, 2), "DequantizeLinear": (1, 2), "QLinearConv": (1, 2, 4, 5, 6, 7),
                      "QLinearMatMul": (1, 2, 4, 5, 6, 7), "QGemm": (1, 2, 4, 5, 7, 8),
                      "ConvInteger": (2, 3), "MatMulInteger": (2, 3)}
INTEGER_KERNELS = {"ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "QGemm"}
INT_WEIGHT_TYPES = {2: "uint8", 3: "int8", 21: "uint4", 22: "int4"}  # onnx.TensorProto data types
FLOAT16 = 10


def _shapes(model) -> dict[str, list[int]]:
    """name -> static shape of every tensor onnx shape inference can tell (unknown dims are 0)."""
    import onnx
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001  (custom-domain ops stop inference; count what is known)
        inferred = model
    g = inferred.graph
    out = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = [d.dim_value for d in t.shape.dim]
    out.update({init.name: list(init.dims) for init in g.initializer})
    return out


def _weight_source(name: str, producers: dict) -> str:
    """The initializer behind a weight input, through DequantizeLinear / Cast / QuantizeLinear."""
    seen = 0
    while name in producers and seen < 4:
        node = producers[name]
        if node.op_type not in ("DequantizeLinear", "Cast", "QuantizeLinear"):
            break
        name, seen = node.input[0], seen + 1
    return name


def _macs_of(node, shapes: dict, producers: dict) -> int | None:
    """MACs of one Conv- or MatMul-like node, None when its shapes are unknown."""
    a, b = (CONV_OPS.get(node.op_type) or MATMUL_OPS[node.op_type])
    x = shapes.get(node.input[a]) if len(node.input) > a else None
    w = shapes.get(node.input[b]) or shapes.get(_weight_source(node.input[b], producers))
    if not x or not w or 0 in x or 0 in w:
        return None
    if node.op_type in CONV_OPS:
        y = shapes.get(node.output[0])
        if node.op_type == "ConvTranspose":  # every input element meets every kernel tap
            return int(np.prod(x)) * int(np.prod(w[1:]))
        return int(np.prod(y)) * int(np.prod(w[1:])) if y and 0 not in y else None
    trans_a = trans_b = 0
    if node.op_type in ("Gemm", "QGemm"):
        attrs = {at.name: at.i for at in node.attribute}
        trans_a, trans_b = attrs.get("transA", 0), attrs.get("transB", 0)
    m, k = (x[-1], x[-2]) if trans_a else (x[-2] if len(x) > 1 else 1, x[-1])
    n = w[-2] if trans_b else w[-1]
    batch = int(np.prod(x[:-2])) if len(x) > 2 else 1
    return batch * m * k * n


def count_macs(model) -> tuple[int, int]:
    """(MACs, nodes whose shapes were unknown) of the graph's Conv- and MatMul-like nodes."""
    shapes = _shapes(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    total = unknown = 0
    for node in model.graph.node:
        if node.op_type in CONV_OPS or node.op_type in MATMUL_OPS:
            macs = _macs_of(node, shapes, producers)
            total += macs or 0
            unknown += macs is None
    return total, unknown


def count_params(model) -> int:
    """Elements of the weight initializers: not scales, zero points or int64 shape constants."""
    inits = {i.name: i for i in model.graph.initializer}
    bookkeeping = set()
    for node in model.graph.node:
        slots = QUANT_PARAM_INPUTS.get(node.op_type)
        for i, name in enumerate(node.input):
            if slots is not None and i in slots:
                bookkeeping.add(name)
            elif slots is None and node.domain == "com.microsoft" and node.op_type.startswith("QLinear") \
                    and name in inits and int(np.prod(inits[name].dims)) == 1:
                bookkeeping.add(name)
    return sum(int(np.prod(init.dims)) for name, init in inits.items()
               if name not in bookkeeping and init.data_type != 7)  # 7: INT64


def _stored_weight(dq, inits: dict, producers: dict):
    """The integer tensor a weight DequantizeLinear reads: an initializer, or (float weights left
    behind a QuantizeLinear, as some exporters do) that QuantizeLinear's zero point, which has the
    stored type. None for activations."""
    if dq.input[0] in inits:
        return inits[dq.input[0]]
    q = producers.get(dq.input[0])
    if q is not None and q.op_type == "QuantizeLinear" and q.input[0] in inits and len(q.input) > 2:
        return inits.get(q.input[2])
    return None


def _int_weights(model, inits: dict) -> list[tuple[str, bool]]:
    """(weight dtype, per-channel) of every integer weight: DequantizeLinear of an integer
    initializer, or the weight input of an integer kernel."""
    found = []
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        stored = _stored_weight(node, inits, producers) if node.op_type == "DequantizeLinear" else None
        if stored is not None:
            scale = inits.get(node.input[1]) if len(node.input) > 1 else None
            per_channel = scale is not None and int(np.prod(scale.dims)) > 1
            found.append((INT_WEIGHT_TYPES.get(stored.data_type), per_channel))
        elif node.op_type in INTEGER_KERNELS:
            w = node.input[(CONV_OPS.get(node.op_type) or MATMUL_OPS[node.op_type])[1]]
            scale_at = {"QLinearConv": 4, "QLinearMatMul": 4, "QGemm": 4}.get(node.op_type)
            scale = inits.get(node.input[scale_at]) if scale_at and len(node.input) > scale_at else None
            if w in inits:
                found.append((INT_WEIGHT_TYPES.get(inits[w].data_type),
                              scale is not None and int(np.prod(scale.dims)) > 1))
    return [(dtype, pc) for dtype, pc in found if dtype]


def _activation_type(model, inits: dict) -> str | None:
    """u8 / s8: the type QuantizeLinear gives activations (its zero point's; uint8 without one)."""
    types = set()
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits:
            zp = inits.get(node.input[2]) if len(node.input) > 2 else None
            types.add(INT_WEIGHT_TYPES.get(zp.data_type, "uint8") if zp is not None else "uint8")
    if not types:
        return None
    return {"uint8": "u8", "int8": "s8"}.get(types.pop(), "mixed") if len(types) == 1 else "mixed"


def quantization(model) -> dict:
    """{precision, how, weights, activations, format}: what the graph's numbers are."""
    inits = {i.name: i for i in model.graph.initializer}
    ops = {n.op_type for n in model.graph.node}
    weights = _int_weights(model, inits)
    if weights:
        dtypes = {d for d, _ in weights}
        precision = "int4" if dtypes <= {"int4", "uint4"} else "int8"
        channel = {pc for _, pc in weights}
        return {"precision": precision,
                "how": "dynamic" if "DynamicQuantizeLinear" in ops else "static",
                "weights": "per-channel" if channel == {True} else ("per-tensor" if channel == {False} else "mixed"),
                "activations": _activation_type(model, inits),
                "format": "qdq" if ops.isdisjoint(INTEGER_KERNELS) else "integer-kernels"}
    big = [i for i in inits.values() if int(np.prod(i.dims)) >= 64]
    if big and sum(i.data_type == FLOAT16 for i in big) * 2 >= len(big):
        return {"precision": "fp16", "how": "weights"}
    return {"precision": "fp32"}


def variant_name(quant: dict, stages: list[dict] | None = None) -> str:
    """The row label: [prunedNN-]precision[-how-weights-activations], e.g. int8-static-perchannel-u8.

    How comes from the optimize stages when edgecls quantized (QAT looks like static QDQ in the
    graph); the pruning ratio only from them (a pruned graph is just a smaller graph)."""
    stages = stages or []
    parts = [f"pruned{int(round(st['ratio'] * 100))}" for st in stages
             if st.get("stage") == "pruned" and isinstance(st.get("ratio"), (int, float))][:1]
    parts.append(quant.get("precision", "fp32"))
    if quant.get("precision") in ("int8", "int4"):
        qat = any(st.get("stage") == "quantized" and st.get("method") == "qat" for st in stages)
        parts.append("qat" if qat else quant.get("how", "static"))
        parts.append(str(quant.get("weights", "")).replace("-", ""))
        parts.append(quant.get("activations") or "")
    return "-".join(p for p in parts if p)


def graph_facts(model_or_path, stages: list[dict] | None = None) -> dict:
    """{macs, macs_unknown_nodes, params, quantization, variant} of an onnx.ModelProto or file."""
    import onnx
    model = onnx.load(str(model_or_path)) if isinstance(model_or_path, (str, Path)) else model_or_path
    macs, unknown = count_macs(model)
    quant = quantization(model)
    return {"macs": macs, "macs_unknown_nodes": unknown, "params": count_params(model),
            "quantization": quant, "variant": variant_name(quant, stages)}
