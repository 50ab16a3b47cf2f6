"""A TVM RPC server on a board for the length of a tuning run, reached through SSH.

The server listens on the board's 127.0.0.1 only; edgecls reaches it through an `ssh -L`
forward, so no port is opened on the board's network. No TVM import here: the board runs
`python -m tvm.exec.rpc_server` with its own python (`spec`: an edgecls.compile.tvm_tuning.RpcSpec).
With a tracker (tvm_fleet) the server also registers there, through an `ssh -R` forward.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import socket
import subprocess
import threading
import time

from edgecls.remote.ssh import RemoteError, SshHost

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


# ---- background commands and port forwards (own connections, not the shared ControlMaster)


def _dedicated_options(host: SshHost) -> list[str]:
    """ssh_options() on a connection of its own (ssh keeps the first value of an option): a
    forward requested through the shared master would outlive its client in the master, and
    a long session must end when its own client is killed."""
    return ["-o", "ControlMaster=no", "-o", "ControlPath=none", *host.ssh_options()]

def spawn(host: SshHost, argv: list[str], *, cwd: str | None = None) -> subprocess.Popen:
    """Start argv on the board and return at once (stdin, stdout, stderr are pipes; closing
    stdin sends EOF to the remote command). Its own session, so a Ctrl-C meant for edgecls
    does not cut the connection before edgecls has cleaned up."""
    line = host.command_line(argv, cwd)
    try:
        return subprocess.Popen(["ssh", *_dedicated_options(host), "--", host.host, line],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
    except FileNotFoundError:
        raise RemoteError("ssh not found on PATH; install it with: apt-get install openssh-client") from None


def stop(proc: subprocess.Popen | None) -> None:
    """End a spawn()ed ssh or forward (None: nothing to do)."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _listening(host: str, port: int) -> bool:
    """Whether something listens on host:port here. Read from /proc/net/tcp where there is one:
    a test connection would reach the board's RPC server through the forward, and a server with
    a tracker drops and redoes its registration on such an empty connection."""
    try:
        with open("/proc/net/tcp") as f:
            table = f.read().splitlines()[1:]
    except OSError:
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex((host, port)) == 0
    want = f"{socket.inet_aton(host)[::-1].hex().upper()}:{port:04X}"
    return any(f.split()[1] == want and f.split()[3] == "0A" for f in table)  # 0A: LISTEN


def forward(host: SshHost, remote_port: int, *, remote_host: str = "127.0.0.1",
            local_host: str = "127.0.0.1", local_port: int | None = None,
            timeout: float = 15.0) -> tuple[subprocess.Popen, int]:
    """`ssh -N -L`: a port on this machine's local_host (default 127.0.0.1; any 127.x.y.z on
    Linux) that reaches remote_host:remote_port as seen from the board (nothing is opened on
    the board's network). local_port None: a free one. Returns (process, local port) once the
    port listens; terminate the process to close it."""
    for _attempt in range(3 if local_port is None else 1):  # a free port may be taken before ssh binds it
        port = local_port
        if port is None:
            with socket.socket() as s:
                s.bind((local_host, 0))
                port = s.getsockname()[1]
        cmd = ["ssh", *_dedicated_options(host), "-N", "-o", "ExitOnForwardFailure=yes",
               "-L", f"{local_host}:{port}:{remote_host}:{int(remote_port)}", "--", host.host]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if _listening(local_host, port):
                return proc, port
            time.sleep(0.05)
        if proc.poll() is None:
            stop(proc)
            raise RemoteError(f"port forward to {host.label}:{remote_port} not up after {timeout:g} s")
        err = proc.stderr.read() if proc.stderr else b""
        if b"address already in use" not in err.lower() or local_port is not None:
            raise host._error(err, f"port forward {local_host}:{port} to port {remote_port}")
    raise RemoteError(f"port forward to {host.label}:{remote_port}: no free local port")


def reverse_forward(host: SshHost, local_port: int, *, timeout: float = 15.0) -> tuple[subprocess.Popen, int]:
    """`ssh -N -R`: a port on the board's 127.0.0.1 that reaches this machine's
    127.0.0.1:local_port. The board's sshd picks the port (-R 0) and ssh reports it on stderr
    ("Allocated port N for remote forward", an INFO line: LogLevel is forced, a user's
    LogLevel=ERROR would hide it). Returns (process, the board's port)."""
    cmd = ["ssh", *_dedicated_options(host), "-N", "-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=INFO",
           "-R", f"127.0.0.1:0:127.0.0.1:{int(local_port)}", "--", host.host]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    fd, err = proc.stderr.fileno(), b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if m := re.search(rb"Allocated port (\d+) for remote forward", err):
            return proc, int(m.group(1))
        if not select.select([fd], [], [], 0.2)[0]:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:  # ssh exited: unreachable board, or the forward was refused
            proc.wait()
            raise host._error(err, "reverse port forward")
        err += chunk
    stop(proc)
    raise RemoteError(f"reverse port forward to {host.label} not up after {timeout:g} s")
