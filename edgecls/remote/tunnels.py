"""Background commands and port forwards over SSH, each on a connection of its own (not the
shared ControlMaster): `spawn` a long-running remote command, `forward` (ssh -L) and
`reverse_forward` (ssh -R) a port, `stop` any of them. Used by the TVM RPC server and tracker
of a tuning run (edgecls.compile.tvm.tuning)."""

from __future__ import annotations

import os
import re
import select
import socket
import subprocess
import time

from edgecls.errors import RemoteError
from edgecls.remote.ssh import SshHost


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
