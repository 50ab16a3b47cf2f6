"""The only module that talks to boards: OpenSSH `ssh`, `rsync` and `scp` run as subprocesses.

Running the real clients (not a Python SSH library) means the user's ~/.ssh/config works as it
does in a terminal: Include, ProxyJump, IdentityFile, ssh-agent, certificates, known_hosts.

Every call uses the same options: BatchMode (never prompt), a connect timeout, keep-alives (a
dead link ends a call within ~15 s), strict host key checking (an unknown key is refused unless
the user asked for accept-new; a changed key is always refused), and a shared control master so
that the many short commands of a deploy reuse one authenticated connection.

ssh's own failures (exit 255) become one-line `RemoteError`s that say what to do.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import stat
import subprocess
from pathlib import Path
from typing import Self

from edgecls.errors import RemoteError
from edgecls.remote.transfer import FileTransfer, output_lines

SSH_EXIT = 255  # ssh exits 255 for its own errors; anything else is the remote command's status


def _control_dir() -> Path | None:
    """A private, short directory for control sockets (unix socket paths are limited to ~104
    bytes). None when it cannot be made safe (then multiplexing is off)."""
    d = Path(f"/tmp/edgecls-ssh-{os.getuid()}")
    try:
        d.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(d)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None  # somebody else's, or a symlink: do not put sockets there
    return d


def parse_spec(spec: str) -> tuple[str | None, str, int | None]:
    """`alias`, `host`, `user@host`, `host:port`, `user@host:port`, `[v6addr]:port` ->
    (user, host, port)."""
    spec = spec.strip()
    if not spec or spec.startswith("-") or any(c.isspace() for c in spec):
        raise RemoteError(f"bad board address '{spec}': expected an ssh alias or user@host:port")
    user = None
    rest = spec
    if "@" in rest:
        user, rest = rest.rsplit("@", 1)
        if not user or not rest:
            raise RemoteError(f"bad board address '{spec}': expected user@host")
    port = None
    if rest.startswith("["):
        m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", rest)
        if not m:
            raise RemoteError(f"bad board address '{spec}'")
        host, port = m.group(1), m.group(2)
    elif rest.count(":") == 1:
        host, port = rest.split(":")
        if not port.isdigit():
            raise RemoteError(f"bad board address '{spec}': port '{port}' is not a number")
    else:
        host = rest  # a name, an IPv4 address, or a bare IPv6 address (no port)
    if port is not None:
        port = int(port)
        if not 0 < port < 65536:
            raise RemoteError(f"bad board address '{spec}': port {port} out of range")
    if not host or host.startswith("-"):
        raise RemoteError(f"bad board address '{spec}'")
    return user, host, port


def _last_line(stderr: bytes | str, default: str = "no error output") -> str:
    lines = output_lines(stderr)
    return lines[-1] if lines else default


class SshHost(FileTransfer):
    """One board address, reached with the system's OpenSSH client."""

    server_alive_interval = 5  # seconds; a silent link ends after interval * count_max
    server_alive_count_max = 3

    def __init__(self, spec: str, ssh_config: str | Path | None = None,
                 accept_new_host_key: bool = False, connect_timeout: int = 10,
                 *, label: str | None = None):
        self.spec = spec
        self.user, self.host, self.port = parse_spec(spec)
        if ssh_config is None:
            ssh_config = os.environ.get("EDGECLS_SSH_CONFIG") or None
        self.ssh_config = str(Path(ssh_config).expanduser()) if ssh_config else None
        if self.ssh_config and not Path(self.ssh_config).is_file():
            raise RemoteError(f"ssh config file {self.ssh_config} does not exist")
        self.accept_new_host_key = bool(accept_new_host_key)
        self.connect_timeout = int(connect_timeout)
        self.label = label or spec
        self.rsync_path = "rsync"  # the remote rsync (tests point it elsewhere to force scp)
        ctl = _control_dir()
        if ctl is None:
            self.control_path = None
        else:
            # Separate masters per config file and host-key policy: a master opened under one
            # policy must not carry a connection made under another. `%C` hashes host/port/user.
            key = f"{self.ssh_config}|{self.accept_new_host_key}".encode()
            self.control_path = f"{ctl}/{hashlib.sha1(key).hexdigest()[:8]}-%C"

    # ---- the options every ssh / scp / rsync call shares -----------------------------------

    def ssh_options(self) -> list[str]:
        opts = []
        if self.ssh_config:
            opts += ["-F", self.ssh_config]
        strict = "accept-new" if self.accept_new_host_key else "yes"
        o = [
            "BatchMode=yes",
            f"ConnectTimeout={self.connect_timeout}",
            f"ServerAliveInterval={self.server_alive_interval}",
            f"ServerAliveCountMax={self.server_alive_count_max}",
            f"StrictHostKeyChecking={strict}",
        ]
        if self.control_path:
            o += ["ControlMaster=auto", "ControlPersist=60", f"ControlPath={self.control_path}"]
        else:
            o += ["ControlMaster=no", "ControlPath=none"]
        if self.user:
            o.append(f"User={self.user}")
        if self.port:
            o.append(f"Port={self.port}")
        for item in o:
            opts += ["-o", item]
        return opts

    def _remote_host(self) -> str:
        """Host part for scp/rsync `host:path` arguments."""
        return f"[{self.host}]" if ":" in self.host else self.host

    def __repr__(self) -> str:
        return f"SshHost({self.spec!r}, ssh_config={self.ssh_config!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def master_alive(self) -> bool:
        """Whether a control master for this host is running (no network traffic)."""
        if not self.control_path:
            return False
        try:
            return subprocess.run(["ssh", *self.ssh_options(), "-O", "check", "--", self.host],
                                  check=False, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=10).returncode == 0
        except (subprocess.TimeoutExpired, OSError):
            return False

    def close(self) -> None:
        """Stop the control master, if one runs (harmless when none does)."""
        if not self.control_path:
            return
        try:
            subprocess.run(["ssh", *self.ssh_options(), "-O", "exit", "--", self.host],
                           check=False, stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
        except (subprocess.TimeoutExpired, OSError):
            pass

    # ---- errors -------------------------------------------------------------------------

    def classify(self, stderr: bytes | str) -> str | None:
        """A one-line explanation of an ssh-level failure, or None if stderr shows none."""
        text = "\n".join(output_lines(stderr))
        name = self.label
        where = f"{self.host}:{self.port or 22}"
        m = re.search(r"connect to host (\S+) port (\d+): (.+)", text)
        if m:
            where = f"{m.group(1)}:{m.group(2)}"
        low = text.lower()
        if "remote host identification has changed" in low:
            off = re.search(r"Offending \S+ key in (\S+)", text)
            hint = f" (old key in {off.group(1)})" if off else ""
            return (f"host key of {name} CHANGED since it was recorded in known_hosts{hint}; "
                    f"refusing (possible MITM). If the board was reinstalled, remove the old key "
                    f"with ssh-keygen -R and connect again")
        if "connection refused" in low:
            return f"board {name} unreachable: connection refused on {where}"
        if "banner exchange" in low and "timed out" in low:
            return (f"board {name} unreachable: timed out waiting for the SSH server on {where} "
                    f"(it accepts TCP but does not answer)")
        if "connection timed out" in low or "operation timed out" in low:
            return f"board {name} unreachable: connection to {where} timed out"
        if "no route to host" in low or "network is unreachable" in low or "host is unreachable" in low:
            return f"board {name} unreachable: no route to {where}"
        m = re.search(r"Could not resolve hostname ([^:\s]+)", text)
        if m or "name or service not known" in low or "temporary failure in name resolution" in low:
            host = m.group(1) if m else self.host
            return (f"board {name} unreachable: cannot resolve host name '{host}' "
                    f"(check the name or the alias in your ssh config)")
        if re.search(r"permission denied \((publickey|gssapi|keyboard|password|hostbased)", low):
            return f"key refused by {name} (check IdentityFile / authorized_keys)"
        if ("host key verification failed" in low or "host key is known" in low
                or "no matching host key" in low):
            return (f"host key of {name} not in known_hosts; connect once with ssh, "
                    f"or pass --accept-new-host-key")
        if "timeout, server" in low and "not responding" in low:
            return f"connection to board {name} timed out: the board stopped responding"
        lost = re.compile(r"kex_exchange_identification|connection closed by|connection reset|"
                          r"broken pipe|connection to \S+ closed", re.IGNORECASE)
        for line in output_lines(stderr):
            if lost.search(line):
                return f"connection to board {name} lost: {line}"
        return None

    def _error(self, stderr: bytes | str, what: str) -> RemoteError:
        return RemoteError(self.classify(stderr) or f"{what} on {self.label} failed: {_last_line(stderr)}")

    # ---- commands -------------------------------------------------------------------------

    def command_line(self, argv: list[str], cwd: str | None = None) -> str:
        """The remote shell line for argv: every word quoted, nothing interpreted."""
        if isinstance(argv, (str, bytes)) or not argv:
            raise TypeError("argv must be a non-empty list of strings")
        line = shlex.join(str(a) for a in argv)
        if cwd:
            line = f"cd {shlex.quote(str(cwd))} && {line}"
        return line

    def run(self, argv: list[str], *, cwd: str | None = None, timeout: float | None = None,
            input: bytes | None = None, check: bool = False,
            text: bool = False) -> subprocess.CompletedProcess:
        """Run argv on the board. stdout/stderr are bytes (str with text=True).

        Raises RemoteError when ssh itself fails (unreachable, key refused, host key unknown or
        changed, connection lost) or the call exceeds `timeout`; with check=True also when the
        remote command exits non-zero.
        """
        line = self.command_line(argv, cwd)
        cmd = ["ssh", *self.ssh_options(), "--", self.host, line]
        what = f"'{shlex.join(str(a) for a in argv)[:60]}'"
        kw = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
        try:
            proc = subprocess.run(cmd, check=False, capture_output=True, timeout=timeout, **kw)
        except subprocess.TimeoutExpired:
            raise RemoteError(f"command {what} on {self.label} timed out after {timeout:g} s") from None
        except FileNotFoundError:
            raise RemoteError("ssh not found on PATH; install it with: apt-get install openssh-client") from None
        if proc.returncode == SSH_EXIT:
            reason = self.classify(proc.stderr)
            if reason is None and _looks_like_ssh(proc.stderr):
                reason = f"ssh to {self.label} failed: {_last_line(proc.stderr)}"
            if reason is None and not proc.stderr.strip() and self.control_path \
                    and not self.master_alive():
                # A multiplexed session whose master died (keep-alives unanswered, or the link
                # closed): the master's message went to /dev/null, the client says nothing.
                reason = (f"connection to board {self.label} lost or timed out while running "
                          f"{what} (no answer to keep-alives, or the board closed it)")
            if reason:
                raise RemoteError(reason)
        if check and proc.returncode != 0:
            raise RemoteError(f"command {what} failed on {self.label} (exit {proc.returncode}): "
                              f"{_last_line(proc.stderr)}")
        if text:
            proc.stdout = proc.stdout.decode("utf-8", "replace")
            proc.stderr = proc.stderr.decode("utf-8", "replace")
        return proc


def _looks_like_ssh(stderr: bytes) -> bool:
    last = _last_line(stderr, "")
    return last.startswith(("ssh:", "ssh_", "mux_client", "ControlSocket", "kex_", "Connection"))
