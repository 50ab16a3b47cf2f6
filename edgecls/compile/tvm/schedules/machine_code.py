"""What the int8 kernels compiled to: instruction mnemonics per function of a built model.so
(objdump), and which conv2d/matmul kernels carry the widening_int8 rule's intrinsics. The proof, for
tests and benchmarks, that a tensorization did not fall back to the plain rule."""

from __future__ import annotations

import re
import subprocess

# What a widened kernel's machine code has and the plain rule's has not. LLVM lowers the plain
# int32 multiply of extended bytes to vpmaddwd too (on dwords: vpmovsxbd/vpmovzxbd, 8 MACs), so
# on x86 the mark is the int16 pairs (byte-to-word widening of the interleaved weight rows) or
# the byte pairs (vpmaddubsw, which LLVM never picks itself: it saturates); on NEON the int16
# pairs' sadalp, sdot, or smull on 8-bit lanes reduced by addp. Alternatives per ISA.
# x86 VNNI: vpdpbusd (the plain rule never gets it from LLVM either).
ASM_MARKS = {"avx2": (("vpmaddwd", "vpmovsxbw", "vpunpcklbw"), ("vpmaddubsw", "vpmaddwd")),
             "x86_vnni": (("vpdpbusd",),),
             "neon": (("sadalp",), ("sdot",), ("smull", "addp"))}


def kernel_mnemonics(lib, objdump: str = "objdump") -> dict[str, set[str]]:
    """Instruction mnemonics of every function of a shared library, from its disassembly."""
    text = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(lib)], capture_output=True, text=True,
                          check=True).stdout
    funcs: dict[str, set[str]] = {}
    ops: set[str] = set()
    for line in text.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if head:
            ops = funcs.setdefault(head.group(1), set())
            continue
        fields = line.split("\t")
        # An encoding pseudo-prefix ("{vex} vpdpbusd": AVX-VNNI) is not the mnemonic.
        words = [w for w in fields[1].split() if not w.startswith("{")] if len(fields) > 1 else []
        if fields[0].strip().endswith(":") and words:
            ops.add(words[0])
    return funcs


def widened_kernels(lib, isa: str, objdump: str = "objdump", extra: tuple[str, ...] = ()) -> list[str]:
    """conv2d/matmul kernels of a built model.so whose code carries the widening marks of `isa`
    (plus `extra` mnemonics): the proof that the tensorization did not fall back."""
    needs = [set(marks) | set(extra) for marks in ASM_MARKS[isa]]
    return sorted(f for f, ops in kernel_mnemonics(lib, objdump).items()
                  if ("conv2d" in f or "matmul" in f) and f.endswith("_compute_") and any(n <= ops for n in needs))
