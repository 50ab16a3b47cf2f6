"""A TVM RPC server on a board for the length of a tuning run, reached through SSH.

The server listens on the board's 127.0.0.1 only; edgecls reaches it through an `ssh -L`
forward (edgecls.remote.tunnels), so no port is opened on the board's network. No TVM import
here: the board runs `python -m tvm.exec.rpc_server` with its own python (RpcSpec). With a
tracker (tracker.fleet) the server also registers there, through an `ssh -R` forward.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
import time
from dataclasses import dataclass

from edgecls.errors import RemoteError
from edgecls.remote.ssh import SshHost
from edgecls.remote.tunnels import forward, spawn, stop


@dataclass(frozen=True)
class RpcSpec:
    """Measure on a board: an RPC server started there over SSH, reached via `ssh -L`.
    tune(runner=[spec, spec, ...]): a fleet of boards of one target, behind TVM's RPC tracker."""
    host: str  # ssh alias or user@host:port, as for SshHost
    name: str = ""  # the board's inventory name: a fleet's messages and per-board counts use it
    compiler: str = "g++"  # the target's (cross) compiler, e.g. aarch64-linux-gnu-g++
    python: str = "python3"  # the board's python, with TVM (or its runtime) importable
    ssh_config: str | None = None
    # The server needs only the runtime: skips loading the 260 MB compiler library (3 s instead
    # of 6 s to start here); random inputs then come from numpy (measure.rpc_alloc_argument).
    env: tuple[tuple[str, str], ...] = (("TVM_USE_RUNTIME_LIB", "1"),)
    session_timeout_s: int = 60

# Runs on the board: the server in its own process group, then wait for EOF on stdin, which
# comes when edgecls closes the session or the connection dies; then the whole group (the
# server, its popen worker and forked sessions) is killed: no server outlives its tuning run.
# (`kill -SIG -pgid`, not `kill -- -pgid`: dash, the usual /bin/sh, rejects the `--`. Killing
# only the server would leave its popen worker serving: its listen thread is not a daemon.)
_WATCHDOG = r"""S=; command -v setsid >/dev/null 2>&1 && S=setsid
$S "$@" </dev/null & p=$!
echo "edgecls-rpc-pid $p" >&2
(while kill -0 $p 2>/dev/null; do sleep 0.2; done; echo "edgecls-rpc-exited" >&2) &
cat >/dev/null
kill -TERM -$p 2>/dev/null || kill -TERM $p 2>/dev/null; sleep 1
kill -KILL -$p 2>/dev/null || kill -KILL $p 2>/dev/null
echo "edgecls-rpc-stopped" >&2"""


# Two servers that bind one port at the same moment can both succeed: TVM's server sets
# SO_REUSEADDR, which Linux honours until one of them listens. It logs "bind to" and then dies
# in listen() with "Address already in use" (two fleet "boards" on one host, two tune runs on
# one board). So a start counts only once the server has outlived its listen() by SETTLE_S;
# a lost race is retried, the next start skipping the port now taken.
SETTLE_S = 0.75
_START_ATTEMPTS = 4


class _ServerStart:
    """One start of the server command on the board: its stderr drained on a thread into
    `lines` (the last 200), pid, port and session counts into `info`."""

    def __init__(self, host: SshHost, argv: list[str], info: dict):
        self.proc = spawn(host, ["sh", "-c", _WATCHDOG, "edgecls-rpc", *argv])
        self.lines: list[str] = []
        self.bound, self.exited = threading.Event(), threading.Event()
        self.info = info
        self.drainer = threading.Thread(target=self._drain, daemon=True)
        self.drainer.start()

    def _drain(self):  # keep reading: the server logs every session and must never block on stderr
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self.lines.append(line)
            del self.lines[:-200]
            if m := re.search(r"edgecls-rpc-pid (\d+)", line):
                self.info["remote_pid"] = int(m.group(1))
            if m := re.search(r"bind to [^\s:]+:(\d+)", line):
                self.info["remote_port"] = int(m.group(1))
                self.bound.set()
            if "edgecls-rpc-exited" in line or "Address already in use" in line:
                self.exited.set()  # the server died (no TVM there, a lost port race): fail now
            if "connected from" in line:  # logged by TVM's server as each session starts
                self.info["sessions"] += 1
        self.exited.set()

    def wait_up(self, timeout: float) -> bool:
        """Whether the server bound its port and was still alive SETTLE_S later."""
        deadline = time.monotonic() + timeout
        while not (self.bound.is_set() or self.exited.is_set()) and time.monotonic() < deadline:
            self.bound.wait(0.1)
        return self.bound.is_set() and not self.exited.wait(SETTLE_S)

    def tail(self) -> str:
        last = [ln for ln in self.lines if ln.strip() and not ln.startswith("edgecls-rpc")][-1:]
        return last[0] if last else "no output"

    def stop(self, host: SshHost) -> None:
        """EOF to the watchdog, which kills the server's process group; a kill over SSH if the
        watchdog did not say it stopped it."""
        self.proc.stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.drainer.join(5)  # the last session lines, for info["sessions"]
        pid = self.info.get("remote_pid")
        if pid and not any("edgecls-rpc-stopped" in ln for ln in self.lines):
            with contextlib.suppress(RemoteError):
                host.run(["kill", "-KILL", f"-{pid}"], timeout=30)


@contextlib.contextmanager
def rpc_server(spec, info: dict, start_timeout_s: float = 180.0, *, tracker: str | None = None,
               key: str = "", custom_addr: str | None = None):
    """Start `python -m tvm.exec.rpc_server` on the board (loopback only) over SSH and yield a
    local port forwarded to it; stop both afterwards. `info` gets remote_pid, remote_port and
    sessions (RPC sessions served, counted from the server's log).

    With `tracker` ("host:port" as the board sees it) the server registers there under `key`,
    announcing `custom_addr` (a loopback address of this machine) and its own port: the forward
    then listens on custom_addr:<the server's port>, the address the tracker hands to clients."""
    host = SshHost(spec.host, ssh_config=spec.ssh_config)
    argv = ["env", *(f"{k}={v}" for k, v in spec.env), spec.python, "-m", "tvm.exec.rpc_server",
            "--host", "127.0.0.1", "--port", "9090", "--port-end", "9199"]
    if tracker:
        argv += ["--tracker", tracker, "--key", key, "--custom-addr", custom_addr]
    server, tunnel = None, None
    try:
        for _attempt in range(_START_ATTEMPTS):
            info["sessions"] = 0
            info.pop("remote_port", None)
            server = _ServerStart(host, argv, info)
            if server.wait_up(start_timeout_s):
                break
            server.stop(host)
            if "Address already in use" not in "\n".join(server.lines):
                break
        if not (server.bound.is_set() and not server.exited.is_set()):
            raise RemoteError(f"TVM RPC server did not start on {spec.host} with {spec.python}: {server.tail()}")
        tunnel, local_port = forward(host, info["remote_port"], local_host=custom_addr or "127.0.0.1",
                                     local_port=info["remote_port"] if custom_addr else None)
        yield local_port
    finally:
        stop(tunnel)
        if server is not None and server.proc.returncode is None:
            server.stop(host)
        host.close()


