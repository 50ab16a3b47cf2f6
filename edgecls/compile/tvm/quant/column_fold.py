"""Few-channel convs (the RGB stem) on ARMv8.0's 8-bit smull kernels and ARMv8.2's sdot
kernels: kernel columns folded into the input channels (quant.int8's "s8_cols" mode,
operands.input_mode).

A 3-channel conv cannot feed the smull/smlal2 kernels (8 to 32 input channels per call), so it
ran on int16 pairs, its 3 channels padded to 4: ResNet-18's 7x7 stride-2 stem was 97.4 M of the
net's 526.7 M instructions per inference (qemu -cpu cortex-a72). Here the KW columns x C channels
of one kernel row become one reduction of KW*C channels, padded to a multiple of 8 (21 -> 24
for ResNet-18, 9 -> 16 for MobileNetV2's 3x3 stem):

    X'[n, i, ow, kw*C + c] = Xpad[n, i, sw*ow + kw, c]      (NHWC, Xpad padded with z_x)
    W'[o, kw*C + c, kh, 0] = W[o, c, kh, kw]                 (zero for the padding channels)
    conv(X, W, stride (sh, sw), pad) = conv(X', W', stride (sh, 1), no pad)

In NHWC, X''s channels at (i, ow) are the KW*C consecutive bytes of Xpad's row i that start at
column sw*ow: one contiguous copy per output column (the column_fold kernel, a call_tir the
injective rule vectorizes), no selects. Xpad's right edge is widened so that a padded channel
run never leaves its row; those columns only meet zero weights. The zero-point correction
(quant.int8) is unchanged: every tap still reads z_x or a real input, and the sum of weights is
the same.

When the whole kernel fits one call (KH*KW*C <= 32: MobileNetV2's 3x3 stem, 27 -> 32 channels)
the kernel rows fold too, and the conv becomes a 1x1 over X'[n, oh, ow, kh*KW*C + kw*C + c]: one
smull call per output instead of one per kernel row (MobileNetV2 int8's stem 6.42 -> 4.24 M,
its fold 0.31 M; the copies of 9-byte runs are unrolled, and LLVM merges them into vectors).

The fold kernel is marked opaque for FuseOps: fused with its producers it would recompute the
quantize of each input byte for every X' element that copies it (about 4x on ResNet-18).
"""

from __future__ import annotations

import numpy as np

from edgecls.compile.tvm.core import SCHEDULED_ATTR

OPAQUE = 8  # TVM's OpPatternKind kOpaque: FuseOps keeps the kernel alone
FOLD_MULTIPLE = 8  # the smull kernels take multiples of 8 channels per call (isa MULL_K)
MAX_FOLDED_CHANNELS = 32


def foldable(conv_attrs, w_q: np.ndarray) -> bool:
    """Whether a regular conv's columns fold into at most 32 channels: few input channels (not a
    multiple of 8, which the kernels take as they are), more than one kernel column, no dilation."""
    _, cin, _, kw = w_q.shape
    return (int(conv_attrs.groups) == 1 and cin % FOLD_MULTIPLE != 0 and kw > 1
            and kw * cin <= MAX_FOLDED_CHANNELS and all(int(d) == 1 for d in conv_attrs.dilation))


def _fold_func(src_shape: tuple, out_shape: tuple, row_step: int, step: int, segment: int, kernel_rows: int):
    """The column_fold PrimFunc, scheduled: X'[b, i, ow, j] = Xflat[b, row_step*i + q, step*ow +
    j - segment*q] (int8) with q = min(j // segment, kernel_rows - 1), Xflat the padded NHWC rows
    (4-D, indexed as [.., f // cin, f % cin], which flattens back to f). One kernel row
    (q = 0): one contiguous load of the channels per output column, vectorized whole. Several
    (the whole kernel folded): runs of `segment` bytes, copied unrolled."""
    from tvm import s_tir, te, tirx
    cin = src_shape[-1]
    src = te.placeholder(src_shape, "int8", name="x")

    def element(b, i, ow, j):
        q = tirx.min(j // segment, kernel_rows - 1) if kernel_rows > 1 else 0
        f = step * ow + j - segment * q
        return src[b, row_step * i + q, f // cin, f % cin]

    out = te.compute(out_shape, element, name="column_fold")
    # create_prim_func names it "main" (global_symbol): the module's own main has that name.
    sch = s_tir.Schedule(te.create_prim_func([src, out]).without_attr("global_symbol"))
    loops = sch.get_loops(sch.get_sblock("column_fold"))
    (sch.vectorize if kernel_rows == 1 else sch.unroll)(loops[-1])
    sch.parallel(sch.fuse(*loops[:2]))
    return (sch.mod["main"].with_attr("op_pattern", OPAQUE)
            .with_attr(SCHEDULED_ATTR, tirx.IntImm("int32", 1)))


def column_folded_conv(conv_attrs, data, shape, w_q: np.ndarray, z_in: int, const, add_func):
    """(the int32 conv of `data` (NCHW int8 of `shape`, zero point z_in) and `w_q` computed on the
    folded input, the per-channel shape of its output). add_func(name, prim_func) -> GlobalVar
    puts the fold kernel into the module. When the whole kernel fits one call (KH*KW*C <= 32:
    MobileNetV2's 3x3 stem, 27 -> 32), the rows fold too and the conv becomes 1x1."""
    from tvm import relax
    n, cin, h, w = (int(v) for v in shape)
    o, _, kh, kw = w_q.shape
    sh, sw = (int(v) for v in conv_attrs.strides)
    pt, pl, pb, pr = (int(v) for v in conv_attrs.padding)
    out_cols = (w + pl + pr - kw) // sw + 1
    segment = kw * cin
    kernel_rows = kh if kh * segment <= MAX_FOLDED_CHANNELS else 1
    channels = -(-kernel_rows * segment // FOLD_MULTIPLE) * FOLD_MULTIPLE
    rows = h + pt + pb
    out_rows = (rows - kh) // sh + 1 if kernel_rows > 1 else rows
    # Columns so that the last output column's last run of bytes stays inside the row.
    last_run = channels - segment * (kernel_rows - 1)
    cols = max(w + pl + pr, sw * (out_cols - 1) + -(-last_run // cin))
    x = relax.op.permute_dims(data, [0, 2, 3, 1])
    x = relax.op.nn.pad(x, [0, 0, pt, pb, pl, cols - w - pl, 0, 0], pad_value=float(z_in))
    out_shape = (n, out_rows, out_cols, channels)
    gvar = add_func("column_fold", _fold_func((n, rows, cols, cin), out_shape, sh if kernel_rows > 1 else 1,
                                              sw * cin, segment, kernel_rows))
    folded = relax.call_tir(gvar, [x], relax.TensorType(out_shape, "int8"))
    # W'[o, q*segment + kw*C + c, kh - q, 0] = W[o, c, kh, kw] (q: the folded kernel row).
    w_cols = w_q.transpose(0, 3, 1, 2).reshape(o, segment, kh)
    w_fold = np.zeros((o, channels, kh // kernel_rows, 1), np.int8)
    if kernel_rows > 1:
        w_fold[:, :kh * segment, 0, 0] = w_cols.transpose(0, 2, 1).reshape(o, kh * segment)
    else:
        w_fold[:, :segment, :, 0] = w_cols
    # NCHW like every other conv here: ConvertLayout makes it NHWC, and the transpose pair it
    # leaves between the fold and the conv cancels to a copy.
    acc = relax.op.nn.conv2d(relax.op.permute_dims(folded, [0, 3, 1, 2]), const(w_fold),
                             strides=[1 if kernel_rows > 1 else sh, 1], padding=[0, 0, 0, 0],
                             data_layout="NCHW", kernel_layout="OIHW", out_dtype="int32")
    return acc, (1, o, 1, 1)
