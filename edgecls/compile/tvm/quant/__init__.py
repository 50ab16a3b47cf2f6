"""Quantized rewrites of the Relax graph: QDQ conv2d/matmul into integer compute (int8), and the
QDQ residual adds and max pools on the quantized tensors (elementwise, part of the same rewrite)."""

from edgecls.compile.tvm.quant.int8 import int8_summary, quantize_int8

__all__ = ["int8_summary", "quantize_int8"]
