"""A TVM RPC server on a board for the length of a tuning run, reached through SSH.

The server listens on the board's 127.0.0.1 only; edgecls reaches it through an `ssh -L`
forward, so no port is opened on the board's network. No TVM import here: the board runs
`python -m tvm.exec.rpc_server` with its own python (`spec`: an edgecls.compile.tvm_tuning.RpcSpec).
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading

from edgecls.remote.ssh import RemoteError, SshHost

# Runs on the board: the server in its own process group, then wait for EOF on stdin, which
# comes when edgecls closes the session or the connection dies; then the whole group (the
# server, its popen worker and forked sessions) is killed: no server outlives its tuning run.
# (`kill -SIG -pgid`, not `kill -- -pgid`: dash, the usual /bin/sh, rejects the `--`. Killing
# only the server would leave its popen worker serving: its listen thread is not a daemon.)
_WATCHDOG = r"""S=; command -v setsid >/dev/null 2>&1 && S=setsid
$S "$@" </dev/null & p=$!
echo "edgecls-rpc-pid $p" >&2
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
    proc = host.spawn(["sh", "-c", _WATCHDOG, "edgecls-rpc", *server])
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
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    forward = None
    try:
        if not ready.wait(start_timeout_s) or "remote_port" not in info:
            tail = [ln for ln in lines if ln.strip()][-1:] or ["no output"]
            raise RemoteError(f"TVM RPC server did not start on {spec.host} with {spec.python}: {tail[0]}")
        forward, local_port = host.forward(info["remote_port"])
        yield local_port
    finally:
        if forward is not None:
            forward.terminate()
            forward.wait(10)
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
