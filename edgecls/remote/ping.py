"""Is each board reachable right now? One short ssh round trip per board, in parallel."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from edgecls.errors import EdgeclsError
from edgecls.remote.boards import connect


def ping_boards(boards: list, ssh_config=None, timeout: int = 5) -> dict:
    """{board name: True | "reason"}; never raises for an unreachable board."""

    def one(board):
        try:
            with connect(board, ssh_config=ssh_config, connect_timeout=timeout) as ssh:
                ssh.run(["true"], timeout=timeout * 2, check=True)
            return board.name, True
        except EdgeclsError as exc:
            return board.name, str(exc)

    if not boards:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(boards))) as pool:
        return dict(pool.map(one, boards))
