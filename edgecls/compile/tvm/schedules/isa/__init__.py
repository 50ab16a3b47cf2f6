"""The target's instruction set, as the schedules see it: feature queries (features.py) and the
widening int8 tensor intrinsics (intrinsics.py, built from avx2.py and neon.py) and the aarch64 fp32
by-lane FMA (lane_fma.py)."""

from edgecls.compile.tvm.schedules.isa.features import eight_bit_kernels, has_dotprod, has_vnni, simd_lanes, widening_isa
from edgecls.compile.tvm.schedules.isa.intrinsics import ACT_DTYPES, DOT_K, K, LANES, MULL_K, MULL_K_SINGLE_MAX, intrin_name, register_intrinsics

__all__ = ["ACT_DTYPES", "DOT_K", "K", "LANES", "MULL_K", "MULL_K_SINGLE_MAX", "eight_bit_kernels", "has_dotprod", "has_vnni", "intrin_name", "register_intrinsics",
           "simd_lanes", "widening_isa"]
