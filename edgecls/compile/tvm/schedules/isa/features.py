"""What the target's CPU offers the schedules: fp32 SIMD width, which widening int8 intrinsic it
runs, and which 8-bit input its int8 kernels take."""

from __future__ import annotations

from edgecls.compile.tvm.core import load_tvm


def simd_lanes(tvm_target: dict) -> int:
    """fp32 lanes of the widest SIMD unit of the target: NEON 4, AVX-512 16, otherwise 8 (AVX2)."""
    tvm = load_tvm()
    mattr = tvm_target.get("mattr", "")
    mattr = ",".join(mattr) if isinstance(mattr, (list, tuple)) else str(mattr)
    mtriple = str(tvm_target.get("mtriple", ""))
    if "+neon" in mattr or mtriple.startswith(("aarch64", "arm")):
        return 4
    try:
        # TargetFeatures are not populated for x86 in 0.27; LLVM's own feature query is.
        from tvm.target import codegen
        if codegen.target_has_features("avx512f", tvm.target.Target(tvm_target)):
            return 16
    except Exception:  # noqa: BLE001, S110  (an exotic target dict: keep the AVX2 default)
        pass
    return 8


def has_dotprod(target=None) -> bool:
    """Is `target` (None: the current one) an aarch64 one with the ARMv8.2 dot product (sdot)?"""
    tvm = load_tvm()
    from tvm.target import codegen
    if target is None:
        target = tvm.target.Target.current(allow_none=True)
    return (target is not None and target.kind.name == "llvm"
            and str(target.attrs.get("mtriple", "")).startswith("aarch64")
            and bool(codegen.target_has_features("dotprod", target)))


def has_vnni(target=None) -> bool:
    """Does `target` (None: the current one) run 256-bit vpdpbusd: an x86 CPU with AVX512-VNNI
    and AVX512VL (Cascade Lake, Ice Lake, Zen 4/5) or with AVX-VNNI (Alder Lake)?"""
    tvm = load_tvm()
    from tvm.target import codegen
    if target is None:
        target = tvm.target.Target.current(allow_none=True)
    if target is None or target.kind.name != "llvm" or widening_isa(8, target) != "avx2":
        return False
    has = lambda f: bool(codegen.target_has_features(f, target))  # noqa: E731
    return (has("avx512vnni") and has("avx512vl")) or has("avxvnni")


def widening_isa(lanes: int, target=None) -> str | None:
    """Which widening intrinsic a schedule's target can run: "avx2", "neon" or None.

    `target` (a tvm.target.Target), or else the current target context, decides; without either
    only the target's fp32 SIMD width is known (simd_lanes): lanes == 4 means NEON (every NEON
    target of edgecls is aarch64, edgecls/builtin_targets/*.toml) and 8/16 means the x86 host target, which
    edgecls always resolves to this machine's CPU: its AVX2 is asked of LLVM.
    """
    tvm = load_tvm()
    from tvm.target import codegen

    if target is None:
        target = tvm.target.Target.current(allow_none=True)
    if target is not None and target.kind.name == "llvm":
        triple = str(target.attrs.get("mtriple", ""))
        if triple.startswith("aarch64"):
            return "neon"
        if triple and not triple.startswith("x86"):
            return None
        return "avx2" if codegen.target_has_features("avx2", target) else None
    if lanes == 4:
        return "neon"
    host = tvm.target.Target({"kind": "llvm", "mcpu": str(codegen.llvm_get_system_cpu())})
    return "avx2" if lanes >= 8 and codegen.target_has_features("avx2", host) else None


def eight_bit_kernels(tvm_target: dict) -> str | None:
    """Which 8-bit input the target's int8 kernels take (quant.quantize_int8's eight_bit): "u8"
    on AVX2 (vpmaddubsw byte pairs, for 7-bit weights), "u8_vnni" on x86 with VNNI (vpdpbusd,
    any int8 weights), "s8" on aarch64 with dotprod (sdot),
    "s8_mull" on other aarch64 (smull on 8-bit lanes, for weights within [-127, 127]), None
    elsewhere (int16 pairs only)."""
    target = load_tvm().target.Target(tvm_target)
    if has_dotprod(target):
        return "s8"
    if has_vnni(target):
        return "u8_vnni"
    return {"avx2": "u8", "neon": "s8_mull"}.get(widening_isa(0, target))
