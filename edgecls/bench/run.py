"""`edgecls bench` as one function: pick the places, measure in parallel, write the reports."""

from __future__ import annotations

from pathlib import Path

from edgecls.bench.fleet import PlaceResult, bench_places
from edgecls.bench.harness import BenchOptions
from edgecls.bench.places import BoardPlace, LocalPlace
from edgecls.errors import UsageError


def make_places(board_spec: str | None, local: bool, emulate: bool, inventory=None, ssh_config=None,
                accept_new_host_key: bool = False) -> list:
    if bool(board_spec) == bool(local):
        raise UsageError("give either --board NAME[,NAME...|all] or --local")
    if local:
        return [LocalPlace(emulate=emulate)]
    from edgecls.remote.boards import connect, resolve_boards
    return [BoardPlace(b, connect(b, ssh_config=ssh_config, accept_new_host_key=accept_new_host_key))
            for b in resolve_boards(board_spec, inventory)]


def run_bench(artifact: Path, places: list, opts: BenchOptions, out_dir: Path, max_parallel: int = 4,
              on_change=lambda results: None) -> list[PlaceResult]:
    if not Path(artifact).exists():
        raise UsageError(f"artifact {artifact} does not exist")
    return bench_places(Path(artifact), places, opts, Path(out_dir), max_parallel=max_parallel,
                        on_change=on_change)
