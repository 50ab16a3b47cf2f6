"""Measure on a fleet of boards of one target: TVM's own RPC tracker here, one server per board.

`fleet()` runs TVM's tracker on a thread of this process, on 127.0.0.1 (no extra process that
re-imports TVM for 5-50 s), and for each board:
  1. `ssh -R 127.0.0.1:0:127.0.0.1:<tracker>`: the tracker on the board's loopback, port chosen
     by the board's sshd (edgecls.remote.tunnels.reverse_forward);
  2. `python -m tvm.exec.rpc_server --host 127.0.0.1 --tracker 127.0.0.1:<that port> --key K
     --custom-addr A` through rpc_server.rpc_server's watchdog;
  3. `ssh -L A:<server port>:127.0.0.1:<server port>` back to it.
The tracker hands a client what the server registered: [custom_addr, its own port] (TVM
rpc/server.py sends `[PUT, key, (port, matchkey), custom_addr]`; rpc/tracker.py keeps
custom_addr when given). Every board's server listens on its own 127.0.0.1, usually on the same
port 9090, so the boards get distinct loopback addresses A of this machine (Linux routes all of
127.0.0.0/8 to lo): 127.X.Y.(k+2), with X.Y random per run so two fleet runs on one machine do
not collide. That also lets tests run all "boards" on one loopback sshd.

MetaSchedule's RPCRunner then asks the tracker for a session per measurement (measure.
tracker_runner, one worker per board); the tracker's FIFO hands out free servers in turn, and a
server re-registers after each session, so the work spreads over the boards.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time

from edgecls.compile.tvm.tuning.rpc_server import rpc_server
from edgecls.errors import RemoteError
from edgecls.remote.ssh import SshHost
from edgecls.remote.tunnels import reverse_forward, stop


@contextlib.contextmanager
def tracker(host: str = "127.0.0.1"):
    """TVM's tracker (tvm.rpc.tracker.TrackerServerHandler) on a daemon thread; yields its port."""
    import asyncio

    from tornado import ioloop
    from tvm.rpc import base
    from tvm.rpc.tracker import TrackerServerHandler
    sock = socket.socket()
    sock.bind((host, 0))
    sock.listen(64)
    up, state = threading.Event(), {}

    def serve():  # what tvm.rpc.tracker._tracker_server does in Tracker's worker process
        asyncio.set_event_loop(asyncio.new_event_loop())
        try:
            state["loop"] = ioloop.IOLoop.current()
            state["handler"] = TrackerServerHandler(sock, base.random_key("tracker"))
        finally:
            up.set()
        state["handler"].run()
        state["loop"].close()

    thread = threading.Thread(target=serve, name="edgecls-rpc-tracker", daemon=True)
    thread.start()
    up.wait(10)
    if "handler" not in state:
        sock.close()
        raise RemoteError("TVM RPC tracker did not start")
    try:
        yield sock.getsockname()[1]
    finally:  # stop() closes every connection, the socket and the loop; only on the loop's thread
        state["loop"].add_callback(state["handler"].stop)
        thread.join(10)


def tracker_summary(port: int) -> dict:
    """The tracker's own summary: {"queue_info": {key: {free, pending}}, "server_info": [...]}."""
    from tvm import rpc
    session = rpc.connect_tracker("127.0.0.1", port)
    try:
        return session.summary()
    finally:
        session.close()


@contextlib.contextmanager
def _board(name: str, spec, tracker_port: int, key: str, addr: str, info: dict):
    """One board's reverse forward, server and forward; start errors name the board."""
    host = SshHost(spec.host, ssh_config=spec.ssh_config)
    info["addr"], started, tunnel = addr, False, None
    try:
        tunnel, info["board_tracker_port"] = reverse_forward(host, tracker_port)
        with rpc_server(spec, info, tracker=f"127.0.0.1:{info['board_tracker_port']}", key=key,
                        custom_addr=addr):
            started = True
            yield
    except RemoteError as exc:
        if started:
            raise
        raise RemoteError(f"board {name}: {exc}") from None
    finally:
        stop(tunnel)
        host.close()


def _start_all(stack: contextlib.ExitStack, boards: list) -> None:
    """Enter every board's context on a thread of its own (a start is seconds of SSH and Python
    start-up per board); each started board is registered with `stack`, so it is stopped with
    the rest even when another board failed to start."""
    errors: list[tuple[int, BaseException]] = []
    lock = threading.Lock()

    def start(index, cm):
        try:
            cm.__enter__()
        except BaseException as exc:  # noqa: BLE001  (re-raised below, on the caller's thread)
            errors.append((index, exc))
            return
        with lock:
            stack.push(cm.__exit__)

    threads = [threading.Thread(target=start, args=(i, cm), daemon=True) for i, cm in enumerate(boards)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    finally:  # a second Ctrl-C here: the starts still under way end first, so they get stopped too
        for t in threads:
            t.join(300)
    if errors:
        errors.sort(key=lambda e: e[0])
        first = errors[0][1]
        if len(errors) > 1 and isinstance(first, RemoteError):
            raise RemoteError("; ".join(str(e) for _, e in errors)) from None
        raise first


def _wait_registered(port: int, key: str, boards: dict, timeout: float) -> None:
    """Until the tracker lists every board's server under `key` (by its custom address)."""
    by_addr = {b["addr"]: name for name, b in boards.items()}
    deadline = time.monotonic() + timeout
    while True:
        servers = tracker_summary(port).get("server_info", [])
        seen = {s["addr"][0] for s in servers if s.get("key") == f"server:{key}" and s.get("addr")}
        for addr, name in by_addr.items():
            boards[name]["registered"] = addr in seen
        missing = [name for addr, name in by_addr.items() if addr not in seen]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise RemoteError(f"board {missing[0]}: its TVM RPC server did not register with the tracker "
                              f"(reached through ssh -R) within {timeout:g} s")
        time.sleep(0.2)


@contextlib.contextmanager
def fleet(specs: list, key: str, info: dict, *, register_timeout_s: float = 60.0):
    """Start every board's server (specs: RpcSpec with distinct names), registered with a tracker
    here under `key`; yield the tracker's port on 127.0.0.1; stop everything afterwards, also on
    errors. info gets tracker_port, key and boards: {name: addr, remote_pid, remote_port,
    board_tracker_port, registered, sessions}."""
    if not 2 <= len(specs) <= 250:
        raise RemoteError(f"a fleet is 2 to 250 boards, not {len(specs)}")
    net = f"127.{random.randint(2, 254)}.{random.randint(0, 255)}"
    boards = info.setdefault("boards", {})
    with contextlib.ExitStack() as stack:
        port = stack.enter_context(tracker())  # entered first: stopped last, after every server
        info.update(tracker_port=port, key=key)
        _start_all(stack, [_board(s.name, s, port, key, f"{net}.{k + 2}", boards.setdefault(s.name, {}))
                           for k, s in enumerate(specs)])
        _wait_registered(port, key, boards, register_timeout_s)
        yield port
