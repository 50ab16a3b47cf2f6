"""`bench --background-load N`: N busy processes on the place while each runtime is measured.

A classifier on a board shares its cores (camera pipeline, decoder, UI); how a runtime copes with
that differs a lot (TVM's own thread pool: 5-11x slower with one busy process on two cores, ONNX
Runtime 1.7-1.9x; issue #17). So bench can measure under a known load: N POSIX-shell busy loops,
started on the place itself (the board over SSH, else this machine) right before a runtime's
harness and stopped right after it, fresh for every runtime so each meets the same load.

Bounded and always stopped: each loop ends by itself after `bound_s` (the harness timeout plus a
margin), so a killed edgecls or a lost connection cannot leave a board busy for long; the normal
way out, success, a failing harness or Ctrl-C, kills them (TERM, then KILL) and checks that none
is left, failing loudly otherwise. A plain shell loop (no python, no stress tool) runs on every
board, BusyBox included.
"""

from __future__ import annotations

from contextlib import contextmanager

from edgecls.bench.places import Place
from edgecls.errors import ArtifactError, UsageError

MARKER = "edgecls-background-load"  # the loops' $0, so `ps` shows what they are
MAX_PROCESSES = 64
# One busy loop: pure shell arithmetic (user time, like a decoder), a clock check every 20000 steps.
_BUSY = ('end=$(( $(date +%s) + $1 )); while [ "$(date +%s)" -lt "$end" ]; do '
         'i=0; while [ "$i" -lt 20000 ]; do i=$((i+1)); done; done')
# Start $1 loops bounded to $2 s, detached from our stdout (so ssh returns); print their pids.
_START = ('k=0; while [ "$k" -lt "$1" ]; do sh -c \'' + _BUSY + '\' ' + MARKER +
          ' "$2" </dev/null >/dev/null 2>&1 & echo $!; k=$((k+1)); done')
# Stop the pids given; print those still alive (a zombie waiting for its reaper is not alive).
_STOP = ('kill "$@" 2>/dev/null; n=0; while [ "$n" -lt 20 ]; do left=""; for p in "$@"; do '
         'if [ -e "/proc/$p" ] && ! grep -q ") Z" "/proc/$p/stat" 2>/dev/null; then left="$left $p"; fi; '
         'done; [ -z "$left" ] && exit 0; [ "$n" -eq 10 ] && kill -9 $left 2>/dev/null; '
         'sleep 0.1; n=$((n+1)); done; echo $left')


def check_background_load(n: int | None, count: bool = False) -> int:
    """The validated process count (0: none)."""
    n = int(n or 0)
    if n < 0 or n > MAX_PROCESSES:
        raise UsageError(f"--background-load takes 0..{MAX_PROCESSES} busy processes, got {n}")
    if n and count:
        raise UsageError("--background-load does not apply to --count (instruction counts do not "
                         "depend on other processes); drop one of them")
    return n


def start_load(place: Place, n: int, bound_s: float) -> list[int]:
    """Starts n busy loops on the place, each ending by itself after bound_s; returns their pids."""
    proc = place.run(["sh", "-c", _START, "sh", str(n), str(int(bound_s) + 1)], None, 60)
    pids = [int(w) for w in (proc.stdout or "").split() if w.isdigit()]
    if proc.returncode != 0 or len(pids) != n:
        if pids:
            stop_load(place, pids)
        err = (proc.stderr or "").strip().splitlines()
        raise ArtifactError(f"cannot start the background load on {place.name}: "
                            f"{err[-1] if err else f'{len(pids)} of {n} processes started'}")
    return pids


def stop_load(place: Place, pids: list[int]) -> None:
    """Kills the loops and waits until none is left; raises naming any that survive."""
    if not pids:
        return
    proc = place.run(["sh", "-c", _STOP, "sh", *map(str, pids)], None, 60)
    left = (proc.stdout or "").split()
    if proc.returncode != 0 or left:
        raise ArtifactError(f"background load on {place.name} still runs (pids {' '.join(left) or pids}); "
                            f"it ends by itself, or kill it there")


@contextmanager
def background_load(place: Place, n: int, bound_s: float):
    """Runs the body with n busy processes on the place; yields the report's `background_load`."""
    if not n:
        yield None
        return
    pids = start_load(place, n, bound_s)
    record = {"processes": n, "kind": "shell busy loop", "bound_s": int(bound_s) + 1, "stopped": False}
    try:
        yield record
    finally:  # a loop left running outweighs the body's own error: stop_load's is raised
        stop_load(place, pids)
        record["stopped"] = True
