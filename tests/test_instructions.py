"""Instruction counts under qemu-user (edgecls.bench.instructions): the counting plugin itself."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import needs_aarch64

from edgecls.bench.instructions import count_process

CROSS_LIBC = "/usr/aarch64-linux-gnu"

# The main thread does a fixed amount of work while a helper thread does `argv[1]` iterations.
TWO_THREADS_C = r"""
#include <pthread.h>
#include <stdlib.h>
static volatile unsigned long sink;
static void *work(void *arg)
{
    unsigned long n = (unsigned long)arg, s = 0;
    for (unsigned long i = 0; i < n; i++) s += i * i;
    sink = s;
    return NULL;
}
int main(int argc, char **argv)
{
    pthread_t t;
    pthread_create(&t, NULL, work, (void *)strtoul(argv[1], NULL, 10));
    work((void *)1000000UL);
    pthread_join(t, NULL);
    return 0;
}
"""


def _two_threads(tmp_path: Path) -> Path:
    src, exe = tmp_path / "two_threads.c", tmp_path / "two_threads"
    src.write_text(TWO_THREADS_C)
    subprocess.run(["aarch64-linux-gnu-gcc", "-O1", "-pthread", "-o", str(exe), str(src)], check=True, timeout=120)
    return exe


@needs_aarch64
def test_per_thread_counts_main_thread_apart_from_helper_work(tmp_path):
    exe = _two_threads(tmp_path)
    runs = {}
    for helper in (10, 5_000_000):
        counts, proc = count_process(["qemu-aarch64", "-cpu", "cortex-a72", "-L", CROSS_LIBC, str(exe), str(helper)],
                                     per_thread=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        runs[helper] = counts
    small, big = runs[10], runs[5_000_000]
    # The helper's extra 5 M iterations (4 instructions each) land in its own thread's count ...
    assert big.threads[1] - small.threads[1] > 4 * 5_000_000 * 0.99
    assert big.total - small.total > 4 * 5_000_000 * 0.99
    # ... and not in the main thread's: its loop is 4 M instructions, and only joining the helper
    # (a few hundred instructions of futex wait) differs between the two runs.
    assert 4_000_000 < small.main_thread < 4_200_000
    assert abs(big.main_thread - small.main_thread) < 2_000
    assert set(small.threads) == {0, 1}


@needs_aarch64
def test_default_mode_counts_all_threads_without_thread_lines(tmp_path):
    exe = _two_threads(tmp_path)
    counts, proc = count_process(["qemu-aarch64", "-cpu", "cortex-a72", "-L", CROSS_LIBC, str(exe), "10"], timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert counts.threads == {} and 4_000_000 < counts.total < 4_200_000
    assert int(counts.insns.sum()) == counts.total  # every block record is read as a block
