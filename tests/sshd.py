"""Real OpenSSH servers for tests (and benchmarks): no mocks, no real ~/.ssh touched.

`SshdServer` runs `/usr/sbin/sshd -D -e` from a temp dir on loopback (or inside a network
namespace) with its own host key, one authorised client key, and writes an ssh config file naming
it as a board alias. Fixtures:

  ssh_board      one SshdServer on 127.0.0.1 (alias "board1"), function-scoped
  netns_boards   three sshds, each in its own network namespace joined to the root namespace by a
                 veth pair (10.231.0.0/24); yields [(name, ssh_config Path, workdir Path), ...]
                 Skips unless root and `ip netns add` works.

Both also work outside pytest: `with SshdServer(tmp_dir) as s: ...`, `with netns_sshds(tmp_dir)`.
"""

from __future__ import annotations

import contextlib
import getpass
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Self

import pytest

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = next((p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/sftp-server",
                                "/usr/lib/ssh/sftp-server") if os.path.exists(p)), "internal-sftp")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def keygen(path: Path, comment: str = "edgecls-test") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL, capture_output=True)
    return path


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def process_tree(pid: int) -> list[int]:
    kids = _children_map()
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += kids.get(p, [])
    return seen


def kill_tree(pid: int, sig: int = signal.SIGKILL, only_exe: str | None = None) -> None:
    """Kill pid and every descendant (sshd's per-connection processes, which each start their
    own session, and the users' commands); with only_exe, only processes running that binary."""
    for p in process_tree(pid):
        if only_exe:
            try:
                if os.readlink(f"/proc/{p}/exe") != only_exe:
                    continue
            except OSError:
                continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, sig)


class SshdServer:
    """One sshd on `listen` (default 127.0.0.1) with keys, known_hosts and an ssh config in `root`.

    Attributes: name (the ssh alias), host, port, ssh_config, known_hosts, client_key, host_key,
    workdir (an absolute dir to use as the board's workdir; the remote "home" is the real one).
    """

    def __init__(self, root: Path, name: str = "board1", listen: str = "127.0.0.1",
                 port: int | None = None, netns: str | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.name, self.host, self.netns = name, listen, netns
        self._auto_port = not port and not netns
        self.port = port or (22 if netns else free_port(listen))
        self.user = getpass.getuser()
        self.host_key = keygen(self.root / "ssh_host_ed25519_key", "edgecls-test-host")
        self.client_key = keygen(self.root / "client_key")
        (self.root / "authorized_keys").write_text(Path(f"{self.client_key}.pub").read_text())
        self.known_hosts = self.root / "known_hosts"
        self.write_known_hosts()
        self.workdir = self.root / "board-root" / "edgecls"
        self.workdir.parent.mkdir(parents=True, exist_ok=True)
        self.sshd_config = self.root / "sshd_config"
        self.log = self.root / "sshd.log"
        self.ssh_config = self.root / "ssh_config"
        self._write_configs()
        self.proc: subprocess.Popen | None = None

    @property
    def known_host_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def write_known_hosts(self, key_file: Path | None = None) -> None:
        """Record key_file's public key (default: the real host key) for this server."""
        pub = Path(f"{key_file or self.host_key}.pub").read_text().split()
        self.known_hosts.write_text(f"{self.known_host_name} {pub[0]} {pub[1]}\n")

    def _write_configs(self) -> None:
        r = self.root
        self.sshd_config.write_text(
            f"Port {self.port}\n"
            f"ListenAddress {self.host}\n"
            f"HostKey {self.host_key}\n"
            f"PidFile {r}/sshd.pid\n"
            f"AuthorizedKeysFile {r}/authorized_keys\n"
            "StrictModes no\n"
            "UsePAM no\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\n"
            "MaxStartups 64\n"
            "MaxSessions 64\n"
            f"Subsystem sftp {SFTP_SERVER}\n")
        common = (f"  User {self.user}\n"
                  f"  IdentityFile {self.client_key}\n"
                  "  IdentitiesOnly yes\n"
                  "  IdentityAgent none\n"
                  f"  UserKnownHostsFile {self.known_hosts}\n"
                  "  GlobalKnownHostsFile /dev/null\n"
                  "  UpdateHostKeys no\n")
        # `Host *` too: tests that name host:port directly still use only the files in root.
        self.ssh_config.write_text(
            f"Host {self.name}\n  HostName {self.host}\n  Port {self.port}\n{common}\n"
            f"Host *\n{common}")

    def start(self, timeout: float = 10.0) -> SshdServer:
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        cmd = [SSHD, "-D", "-e", "-f", str(self.sshd_config)]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if self._auto_port and "Address already in use" in self.log.read_text():
                    # free_port() raced with another process: take another port, same keys.
                    self.port = free_port(self.host)
                    self.log.write_text("")
                    self.write_known_hosts()
                    self._write_configs()
                    return self.start(timeout)
                raise RuntimeError(f"sshd exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            if self._listening():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"sshd did not listen on {self.host}:{self.port}: {self.log.read_text()[-2000:]}")

    def _listening(self) -> bool:
        if self.netns:
            out = subprocess.run(["ip", "netns", "exec", self.netns, "ss", "-Htln", f"sport = :{self.port}"],
                                 check=False, capture_output=True, text=True).stdout
            return bool(out.strip())
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex((self.host, self.port)) == 0

    def kill(self) -> None:
        """Crash the server: SIGKILL sshd's listener and its per-connection sshd processes
        (what dies when the board's sshd dies; users' commands get EOF, as on a real board)."""
        if self.proc and self.proc.poll() is None:
            kill_tree(self.proc.pid, only_exe=os.path.realpath(SSHD))
            self.proc.wait(5)

    def freeze(self) -> None:
        """Stop (SIGSTOP) every sshd process: TCP stays up, nothing answers (a hung board)."""
        if self.proc and self.proc.poll() is None:
            kill_tree(self.proc.pid, signal.SIGSTOP, only_exe=os.path.realpath(SSHD))

    def stop(self) -> None:
        """Kill the whole process tree, users' commands included."""
        if self.proc is None:
            return
        kill_tree(self.proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self.proc = None

    def restart(self) -> SshdServer:
        self.stop()
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture()
def ssh_board(tmp_path):
    """A running sshd on 127.0.0.1 reachable as ssh alias `board1` via `ssh_board.ssh_config`."""
    if not (os.path.exists(SSHD) and shutil.which("ssh")):
        pytest.skip("openssh-server / openssh-client not installed (scripts/setup installs them)")
    server = SshdServer(tmp_path / "sshd")
    try:
        server.start()
        yield server
    finally:
        server.stop()


# ---- network namespaces ---------------------------------------------------------------------

NETNS_SUBNET = ipaddress.ip_network("10.231.0.0/24")


def _used_addresses() -> set[ipaddress.IPv4Address]:
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], check=False, capture_output=True, text=True).stdout
    used = set()
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            used.add(ipaddress.ip_interface(parts[parts.index("inet") + 1]).ip)
    return used


def netns_supported() -> str | None:
    """None if network namespaces can be made here, else the reason why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not (shutil.which("ip") and os.path.exists(SSHD)):
        return "iproute2 or openssh-server missing"
    probe = f"edgecls-probe-{os.getpid()}"
    proc = subprocess.run(["ip", "netns", "add", probe], check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        return f"ip netns add failed: {proc.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=False, capture_output=True)
    return None


@contextlib.contextmanager
def netns_sshds(root: Path, count: int = 3):
    """`count` namespaces, each with a veth pair to the root namespace (/30s inside
    10.231.0.0/24, picked so they collide with no address in use) and an sshd on port 22.
    Yields the SshdServer objects; removes namespaces and veths on exit, even on failure."""
    root = Path(root)
    tag = f"{os.getpid() % 100000}"
    used = _used_addresses()
    hosts = list(NETNS_SUBNET)
    base = None
    for start in range(0, 256 - 4 * count + 1, 4):
        block = hosts[start:start + 4 * count]
        if not used & set(block):
            base = start
            break
    if base is None:
        raise RuntimeError("no free /30 blocks left in 10.231.0.0/24")
    made_ns, made_veth, servers = [], [], []

    def ip(*args):
        proc = subprocess.run(["ip", *args], check=False, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")

    try:
        for i in range(count):
            ns, outer, inner = f"edgecls-{tag}-{i}", f"ec{tag}h{i}", f"ec{tag}b{i}"
            local = hosts[base + 4 * i + 1]
            remote = hosts[base + 4 * i + 2]
            ip("netns", "add", ns)
            made_ns.append(ns)
            ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            made_veth.append(outer)
            ip("link", "set", inner, "netns", ns)
            ip("addr", "add", f"{local}/30", "dev", outer)
            ip("link", "set", outer, "up")
            ip("-n", ns, "addr", "add", f"{remote}/30", "dev", inner)
            ip("-n", ns, "link", "set", inner, "up")
            ip("-n", ns, "link", "set", "lo", "up")
            server = SshdServer(root / f"nsboard{i}", name=f"nsboard{i}", listen=str(remote), netns=ns)
            servers.append(server)
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()
        for veth in made_veth:
            subprocess.run(["ip", "link", "del", veth], check=False, capture_output=True)
        for ns in made_ns:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


@pytest.fixture()
def netns_boards(tmp_path):
    """Three sshd "boards", each in its own network namespace: [(name, ssh_config, workdir)]."""
    reason = netns_supported()
    if reason:
        pytest.skip(reason)
    with netns_sshds(tmp_path / "netns", 3) as servers:
        yield [(s.name, s.ssh_config, s.workdir) for s in servers]
