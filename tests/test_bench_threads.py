"""The thread count a benchmark uses when --threads is not given (edgecls/bench/threads.py): every
core of the target's big cluster on its boards, pinned there; as many unpinned under emulation;
every CPU where the target declares no cluster. Read from the shipped target TOMLs."""

from __future__ import annotations

import os

import pytest

from edgecls.bench.places import BoardPlace, LocalPlace
from edgecls.bench.threads import choose_threads
from edgecls.remote.boards import Board
from edgecls.targets import get_target


def _target(name: str) -> dict:
    return get_target(name).to_dict()


def _board(target: str, emulator=()) -> BoardPlace:
    return BoardPlace(Board(name="b1", host="b1", target=target, emulator=tuple(emulator)), ssh=None)


@pytest.mark.parametrize("target, threads, cores", [
    ("rk3399", 2, [4, 5]), ("rpi4", 4, [0, 1, 2, 3]), ("jetson-orin-nano", 6, [0, 1, 2, 3, 4, 5])])
def test_a_board_defaults_to_its_big_cluster_pinned(target, threads, cores):
    c = choose_threads(None, None, _target(target), _board(target))
    assert (c.threads, c.cores) == (threads, cores)
    assert c.how == f"default: one per core of {target}'s big cluster (cpus {','.join(map(str, cores))}), pinned there"


def test_emulation_keeps_the_count_without_pinning():
    rk = _target("rk3399")
    for place in (_board("rk3399", ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]), LocalPlace(emulate=True)):
        c = choose_threads(None, None, rk, place)
        assert (c.threads, c.cores) == (2, None) and c.how.endswith("unpinned under emulation")


def test_no_cluster_means_every_cpu_here_and_options_override():
    ncpu = len(os.sched_getaffinity(0))
    c = choose_threads(None, None, _target("x86-host"), LocalPlace())
    assert (c.threads, c.cores, c.how) == (ncpu, None, f"default: one per CPU of local ({ncpu})")
    rk = _target("rk3399")
    assert choose_threads(None, None, rk, LocalPlace(emulate=True), "all").threads == ncpu  # --cores all
    given = choose_threads(3, None, rk, _board("rk3399"))
    assert (given.threads, given.cores, given.how) == (3, None, "given (--threads)")
    little = choose_threads(None, [0, 1, 2, 3], rk, _board("rk3399"), "little")
    assert (little.threads, little.cores) == (4, [0, 1, 2, 3]) and "--cores 0,1,2,3" in little.how
