"""Multiply-accumulate ceilings of this x86 CPU: exact int8 (AVX2 vpmaddwd) vs fp32 FMA.

Why int8 is not 2x fp32 here: without AVX-512 VNNI / AVX-VNNI, an exact int8 MAC on AVX2 is
vpmaddwd (16 int16 products, summed in pairs into 8 int32 lanes) followed by vpaddd into the
accumulator. How many of those pairs a core retires per second, against how many 8-lane FMAs,
bounds what any int8 kernel (ours, XNNPACK's, ONNX Runtime's exact path) can do against fp32.
Also timed: vpmaddubsw (u8 x s8, 32 products per instruction, but its int16 pair sums saturate,
so only 7-bit weights are exact: ONNX Runtime's reduce_range) + vpmaddwd(ones) + vpaddd.

Where the CPU has AVX512-VNNI (+VL), also vpdpbusd (4 u8 x s8 products per int32 lane, in
place, exact for full-range weights) at 256 bits (ymm, what x86_vnni.py's kernels use) and at
512 bits (zmm): on Zen 4 a 512-bit op is two 256-bit halves, so both give the same MACs per second.

Each loop keeps 10 independent accumulator chains (more than latency x throughput), compiled
with gcc -O2 -mavx2 -mfma; process CPU time of one thread. Not a test: run it on a quiet machine.

    .venv/bin/python benchmarks/mac_ceiling.py [--iters 100000000] [--out benchmarks/results/mac_ceiling.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

SOURCE = r"""
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double cpu(void) { struct timespec t; clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
#define CHAINS 10
int main(int argc, char **argv) {
  long n = atol(argv[1]);
  __m256i x = _mm256_set1_epi16(3), w = _mm256_set1_epi16(5), b = _mm256_set1_epi8(2), ones = _mm256_set1_epi16(1);
  __m256 fx = _mm256_set1_ps(1.0001f), fw = _mm256_set1_ps(0.9999f);
  __m256i a[CHAINS], c[CHAINS]; __m256 f[CHAINS];
  for (int i = 0; i < CHAINS; i++) { a[i] = c[i] = _mm256_setzero_si256(); f[i] = _mm256_setzero_ps(); }
  double t0 = cpu();
  for (long k = 0; k < n; k++) {
#pragma GCC unroll 10
    for (int i = 0; i < CHAINS; i++) { __asm__ volatile("" : "+x"(x)); a[i] = _mm256_add_epi32(a[i], _mm256_madd_epi16(x, w)); }
  }
  double t1 = cpu();
  for (long k = 0; k < n; k++) {
#pragma GCC unroll 10
    for (int i = 0; i < CHAINS; i++) { __asm__ volatile("" : "+x"(fx)); f[i] = _mm256_fmadd_ps(fx, fw, f[i]); }
  }
  double t2 = cpu();
  for (long k = 0; k < n; k++) {
#pragma GCC unroll 10
    for (int i = 0; i < CHAINS; i++) { __asm__ volatile("" : "+x"(b)); c[i] = _mm256_add_epi32(c[i], _mm256_madd_epi16(_mm256_maddubs_epi16(b, b), ones)); }
  }
  double t3 = cpu();
  long s = 0; float g = 0;
  for (int i = 0; i < CHAINS; i++) { s += _mm256_extract_epi32(a[i], 0) + _mm256_extract_epi32(c[i], 0); g += f[i][0]; }
  double ops = (double)n * CHAINS;
  printf("%.6g %.6g %.6g %ld %g\n", ops * 16 / (t1 - t0), ops * 8 / (t2 - t1), ops * 32 / (t3 - t2), s, g);
  return 0;
}
"""

VNNI_SOURCE = r"""
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double cpu(void) { struct timespec t; clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
#define CHAINS 10
int main(int argc, char **argv) {
  long n = atol(argv[1]);
  __m256i x = _mm256_set1_epi8(3), w = _mm256_set1_epi8(5), a[CHAINS];
  __m512i x5 = _mm512_set1_epi8(3), w5 = _mm512_set1_epi8(5), c[CHAINS];
  for (int i = 0; i < CHAINS; i++) { a[i] = _mm256_setzero_si256(); c[i] = _mm512_setzero_si512(); }
  double t0 = cpu();
  for (long k = 0; k < n; k++) {
#pragma GCC unroll 10
    for (int i = 0; i < CHAINS; i++) { __asm__ volatile("" : "+x"(x)); a[i] = _mm256_dpbusd_epi32(a[i], x, w); }
  }
  double t1 = cpu();
  for (long k = 0; k < n; k++) {
#pragma GCC unroll 10
    for (int i = 0; i < CHAINS; i++) { __asm__ volatile("" : "+v"(x5)); c[i] = _mm512_dpbusd_epi32(c[i], x5, w5); }
  }
  double t2 = cpu();
  long s = 0;
  for (int i = 0; i < CHAINS; i++) s += _mm256_extract_epi32(a[i], 0) + _mm512_reduce_add_epi32(c[i]);
  double ops = (double)n * CHAINS;
  printf("%.6g %.6g %ld\n", ops * 32 / (t1 - t0), ops * 64 / (t2 - t1), s);
  return 0;
}
"""


def _best_of_three(tmp: Path, name: str, source: str, flags: list[str], iters: int, count: int) -> list[float]:
    """GMAC/s per loop of a C program (best of three runs)."""
    src, exe = tmp / f"{name}.c", tmp / name
    src.write_text(source)
    subprocess.run(["gcc", "-O2", *flags, str(src), "-o", str(exe)], check=True)
    runs = [subprocess.run([str(exe), str(iters)], capture_output=True, text=True, check=True).stdout.split()
            for _ in range(3)]
    return [max(float(r[i]) for r in runs) / 1e9 for i in range(count)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=100_000_000)
    ap.add_argument("--out", default="benchmarks/results/mac_ceiling.json")
    args = ap.parse_args()
    flags = set(next((ln.split(":", 1)[1] for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("flags")), "").split())
    vnni = {"avx512_vnni", "avx512vl", "avx512bw"} <= flags
    with tempfile.TemporaryDirectory() as tmp:
        int8, fp32, sat = _best_of_three(Path(tmp), "mac", SOURCE, ["-mavx2", "-mfma"], args.iters, 3)
        if vnni:
            ymm, zmm = _best_of_three(Path(tmp), "vnni", VNNI_SOURCE, ["-mavx512f", "-mavx512bw", "-mavx512vl",
                                                                       "-mavx512vnni"], args.iters, 2)
    print(f"exact int8, vpmaddwd + vpaddd       {int8:6.1f} GMAC/s  ({int8 / fp32:.2f}x fp32)")
    print(f"fp32, vfmadd231ps                   {fp32:6.1f} GMAC/s")
    print(f"7-bit int8, vpmaddubsw (saturating) {sat:6.1f} GMAC/s  ({sat / fp32:.2f}x fp32)")
    if vnni:
        print(f"int8 VNNI, vpdpbusd ymm             {ymm:6.1f} GMAC/s  ({ymm / fp32:.2f}x fp32)")
        print(f"int8 VNNI, vpdpbusd zmm             {zmm:6.1f} GMAC/s  ({zmm / fp32:.2f}x fp32)")
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    result = {"cpu": cpu, "threads": 1, "gmac_per_s": {"int8_vpmaddwd": round(int8, 1), "fp32_fma": round(fp32, 1),
                                                        "int8_7bit_vpmaddubsw": round(sat, 1)},
              "int8_over_fp32": round(int8 / fp32, 2)}
    if vnni:
        result["gmac_per_s"].update(int8_vpdpbusd_ymm=round(ymm, 1), int8_vpdpbusd_zmm=round(zmm, 1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
