"""How a QDQ conv2d/matmul's integer op reads its operands (quant.int8's rewrite): which
activation dtype the target's kernels multiply (input_mode), the activation prepared for it
(prepared_input) and the integer conv2d/matmul over it (int_product)."""

from __future__ import annotations

import numpy as np

from edgecls.compile.tvm.quant.column_fold import foldable


class Skip(Exception):
    """This match cannot be computed in integers: keep the float subgraph."""


def _dtype(expr) -> str:
    return str(expr.ty.dtype)


# Byte-pair products (AVX2 vpmaddubsw: u8 x s8, each pair summed in int16) are exact when no
# pair sum can saturate: 2 * 255 * 64 = 32640 <= 32767, so weights within [-64, 64]. ONNX
# Runtime's reduce_range (ptq_onnx's default) quantizes weights to exactly that range.
BYTE_PAIR_MAX_WEIGHT = 64


def input_mode(m, p, w_q: np.ndarray, is_conv: bool, eight_bit: str | None) -> tuple[str, int]:
    """How a conv2d/matmul reads its activation, and the input-channel multiple it needs:
    "u8" (uint8, channels in fours: AVX2 byte pairs, only for weights within [-64, 64]; x86 VNNI
    (eight_bit "u8_vnni"), any weights), "s8"
    (int8, channels in fours: ARMv8.2 sdot; in eights on ARMv8.0, for weights within [-127,
    127] and channels already in eights), "s8_cols" (int8 for few-channel convs such as the RGB
    stem, on ARMv8.0 and with sdot: kernel columns folded into channels, quant.column_fold; with
    sdot, ResNet-18's 7x7 stem reads 24 folded channels per kernel row in 8-byte loads instead of
    one ld1r + address add per pixel: 16.34 -> 12.26 M instructions, qemu -cpu cortex-a76), "int16" (int16(x_q) -
    z_x, channels in pairs: the widening kernels; multiple 1: depthwise convs on aarch64, int16
    weights too), or "raw" (the 8-bit input as is: depthwise convs elsewhere, not widened).

    Depthwise on aarch64 (eight_bit "s8" or "s8_mull"): int16 x int16 products accumulate by
    smlal/smlal2 straight from the loaded vectors (ldr q + smlal + smlal2 per 8 channels and
    tap), where the raw uint8 input took ldr s, two uxtl, the weight's sign extension and mla
    per 4; zero padding (no sum-of-weights term), padded once ahead of the kernel. It doubles
    the bytes of the depthwise input (the expansion conv writes int16)."""
    if is_conv and int(m[p["conv"]].attrs.groups) != 1:
        return ("int16", 1) if eight_bit in ("s8", "s8_mull") else ("raw", 1)
    if eight_bit == "u8_vnni":  # x86 VNNI: vpdpbusd sums 4 u8 x s8 products in int32, any int8 weights
        return "u8", 4
    if eight_bit == "s8" and is_conv and foldable(m[p["conv"]].attrs, w_q):
        return "s8_cols", 1  # the RGB stem on dotprod too: 16 bytes of folded columns per load
    if eight_bit == "s8" or (eight_bit == "u8" and np.abs(w_q.astype(np.int16)).max(initial=0)
                             <= BYTE_PAIR_MAX_WEIGHT):
        return eight_bit, 4
    if eight_bit == "s8_mull" and w_q.min(initial=0) > -128:  # smull/smlal2: exact for |w| <= 127
        if w_q.shape[1 if is_conv else 0] % 8 == 0:
            return "s8", 8  # ARMv8.0 smull/smlal2: two products per int16 lane
        if is_conv and foldable(m[p["conv"]].attrs, w_q):
            return "s8_cols", 1  # the RGB stem: kernel columns folded into channels (column_fold)
    return "int16", 2


def prepared_input(x_q, z_x: int, mode: str):
    """(activation expr, its zero point) for an input mode.

    int16: int16(x_q) - z_x. The pair multiply-accumulate (vpmaddwd, NEON mul.8h) takes int16
    operands: an 8-bit input had to be widened once per tile row and channel pair inside the
    kernel (a vpshufb, on the shuffle ports that bound those loops), where an int16 input is one
    broadcast load per pair. The cast fuses into the producer's requantize epilogue, which then
    writes int16. With z_x subtracted the real 0.0 is an int16 0: zero padding, no sum-of-weights
    correction. Exact: |x - z_x| <= 255, |w| <= 128, a pair < 2^16.
    u8: vpmaddubsw wants the activation unsigned: an int8 one is shifted by 128 (its zero point
    with it). s8: sdot multiplies signed bytes: a uint8 one is shifted by -128."""
    from tvm import relax

    if mode == "int16":
        x16 = relax.op.astype(x_q, "int16")
        return (relax.op.subtract(x16, relax.const(z_x, "int16")) if z_x else x16), 0
    shift = {("u8", "int8"): 128, ("s8", "uint8"): -128, ("s8_cols", "uint8"): -128}.get((mode, _dtype(x_q)))
    if shift:
        x16 = relax.op.add(relax.op.astype(x_q, "int16"), relax.const(shift, "int16"))
        return relax.op.astype(x16, "uint8" if mode == "u8" else "int8"), z_x + shift
    return x_q, z_x


def int_product(m, p, x_q, data, w_const, extra: int, z_in: int, is_conv: bool, n_out: int):
    """(the int32 conv2d/matmul of the prepared input and the int8 weight constant, the
    per-channel shape of its output)."""
    from tvm import relax

    if is_conv:
        a = m[p["conv"]].attrs
        pad = [int(v) for v in a.padding]
        if extra or (z_in != 0 and any(pad)):
            # Padding must be the quantized value of real 0.0, i.e. z_in, for the bias correction;
            # with the extra channels in the same pad, the conv is unpadded and tensorizes.
            data = relax.op.nn.pad(data, [0, 0, 0, extra, pad[0], pad[2], pad[1], pad[3]], pad_value=float(z_in))
            pad = [0, 0, 0, 0]
        acc = relax.op.nn.conv2d(data, w_const, strides=[int(v) for v in a.strides], padding=pad,
                                 dilation=[int(v) for v in a.dilation], groups=int(a.groups),
                                 data_layout="NCHW", kernel_layout="OIHW", out_dtype="int32")
        return acc, (1, n_out, 1, 1)
    if x_q.ty.ndim < 1:
        raise Skip("matmul input rank")
    if extra:
        data = relax.op.nn.pad(data, [0, 0] * (x_q.ty.ndim - 1) + [0, extra], pad_value=float(z_in))
    return relax.op.matmul(data, w_const, out_dtype="int32"), (n_out,)


