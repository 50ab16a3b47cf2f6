"""A TVM RPC server on a board for the length of a tuning run, reached through SSH.

The server listens on the board's 127.0.0.1 only; edgecls reaches it through an `ssh -L`
forward, so no port is opened on the board's network. No TVM import here: the board runs
`python -m tvm.exec.rpc_server` with its own python (`spec`: an edgecls.compile.tvm_tuning.RpcSpec).
"""

from __future__ import annotations

import contextlib
import re
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


@contextlib.contextmanager
def rpc_server(spec, info: dict, start_timeout_s: float = 180.0):
    """Start `python -m tvm.exec.rpc_server` on the board (loopback only) over SSH and yield a
    local port forwarded to it; stop both afterwards. `info` gets remote_pid and remote_port."""
    host = SshHost(spec.host, ssh_config=spec.ssh_config)
    server = ["env", *(f"{k}={v}" for k, v in spec.env), spec.python, "-m", "tvm.exec.rpc_server",
              "--host", "127.0.0.1", "--port", "9090", "--port-end", "9199"]
    proc = spawn(host, ["sh", "-c", _WATCHDOG, "edgecls-rpc", *server])
    lines: list[str] = []
    ready = threading.Event()

    def drain():  # keep reading: the server logs every session and must never block on stderr
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            lines.append(line)
            del lines[:-200]
            if m := re.search(r"edgecls-rpc-pid (\d+)", line):
                info["remote_pid"] = int(m.group(1))
            if m := re.search(r"bind to [^\s:]+:(\d+)", line):
                info["remote_port"] = int(m.group(1))
                ready.set()
            if "edgecls-rpc-exited" in line:  # the server died (no TVM there, say): fail now
                ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    tunnel = None
    try:
        if not ready.wait(start_timeout_s) or "remote_port" not in info:
            tail = [ln for ln in lines if ln.strip() and not ln.startswith("edgecls-rpc")][-1:] or ["no output"]
            raise RemoteError(f"TVM RPC server did not start on {spec.host} with {spec.python}: {tail[0]}")
        tunnel, local_port = forward(host, info["remote_port"])
        yield local_port
    finally:
        if tunnel is not None:
            tunnel.terminate()
            tunnel.wait(10)
        proc.stdin.close()  # EOF: the watchdog kills the server group
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if "remote_pid" in info and not any("edgecls-rpc-stopped" in ln for ln in lines):
            with contextlib.suppress(RemoteError):
                host.run(["kill", "-KILL", f"-{info['remote_pid']}"], timeout=30)
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

def forward(host: SshHost, remote_port: int, *, remote_host: str = "127.0.0.1",
            timeout: float = 15.0) -> tuple[subprocess.Popen, int]:
    """`ssh -N -L`: a port on this machine's 127.0.0.1 that reaches remote_host:remote_port
    as seen from the board (nothing is opened on the board's network). Returns (process,
    local port) once the port accepts connections; terminate the process to close it."""
    for _attempt in range(3):  # the free port may be taken before ssh binds it
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            local_port = s.getsockname()[1]
        cmd = ["ssh", *_dedicated_options(host), "-N", "-o", "ExitOnForwardFailure=yes",
               "-L", f"127.0.0.1:{local_port}:{remote_host}:{int(remote_port)}", "--", host.host]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex(("127.0.0.1", local_port)) == 0:
                    return proc, local_port
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            raise RemoteError(f"port forward to {host.label}:{remote_port} not up after {timeout:g} s")
        err = proc.stderr.read() if proc.stderr else b""
        if b"address already in use" not in err.lower():
            raise host._error(err, f"port forward to port {remote_port}")
    raise RemoteError(f"port forward to {host.label}:{remote_port}: no free local port")
