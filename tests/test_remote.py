"""Boards over SSH against real OpenSSH servers (tests/sshd.py): quoting, inventory, deploys,
and the faults a lab sees: refused, wrong key, changed host key, disk full, sshd dying mid-upload,
corruption on the board, a host that accepts TCP and never answers, many boards at once."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sshd
from sshd import free_port, keygen

from edgecls.artifact.manifest import manifest_id, new_manifest, write_manifest
from edgecls.errors import EdgeclsError, RemoteError
from edgecls.remote.boards import (
    Board,
    add_board,
    connect,
    get_board,
    load_boards,
    remove_board,
    resolve_boards,
)
from edgecls.remote.board_check import check_board
from edgecls.remote.deploy import deploy, verify_remote
from edgecls.remote.ssh import SshHost, parse_spec

# The sshd fixtures (tests/sshd.py), made visible to pytest in this module.
ssh_board = sshd.ssh_board
netns_boards = sshd.netns_boards


def make_artifact(path: Path, files: dict[str, bytes]) -> Path:
    """An artifact-shaped directory: the files plus a valid manifest.json (no TVM needed)."""
    path.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data)
    write_manifest(path, new_manifest(model={"source": "test"}, target={"name": "x86-host"}))
    return path


def small_files(tag: str = "v1") -> dict[str, bytes]:
    return {
        "model.so": os.urandom(4096),
        "edgecls-runner": os.urandom(3000),
        "lib/libtvm_runtime.so": os.urandom(5000),
        "labels.txt": f"zero\none\n{tag}\n".encode(),
    }


def assert_tree_equal(local: Path, remote: Path) -> None:
    lf = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    rf = sorted(p.relative_to(remote).as_posix() for p in remote.rglob("*") if p.is_file())
    assert lf == rf
    for rel in lf:
        assert (local / rel).read_bytes() == (remote / rel).read_bytes(), rel


def one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg and msg, msg
    return msg


@pytest.fixture()
def board(ssh_board, tmp_path):
    """(Board pointing at the test sshd with an absolute temp workdir, connected SshHost)."""
    b = Board(name="b1", host=ssh_board.name, target="x86-host", workdir=str(ssh_board.workdir))
    host = connect(b, ssh_config=ssh_board.ssh_config, connect_timeout=5)
    yield b, host
    host.close()


def test_run_returns_awkward_arguments_verbatim(board, tmp_path):
    _, host = board
    args = ["a b", "it's", 'say "hi"', "$(touch /tmp/edgecls-pwned)", "`id`", "x; rm -rf /",
            "*", "-n", "", "tab\there", "line1\nline2", "back\\slash", "€ ünï", "$HOME", "a|b&c>d"]
    proc = host.run(["printf", "%s\\0", *args], check=True)
    assert proc.stdout.split(b"\0")[:-1] == [a.encode() for a in args]
    assert not os.path.exists("/tmp/edgecls-pwned")
    # A first word that looks like an ssh option is a (missing) remote command, not an option.
    assert host.run(["-oProxyCommand=touch /tmp/edgecls-pwned"]).returncode == 127
    assert not os.path.exists("/tmp/edgecls-pwned")
    # cwd with spaces and quotes; stdin passed through byte for byte
    odd = tmp_path / "dir with 'quote' $(x)"
    odd.mkdir()
    proc = host.run(["pwd"], cwd=str(odd), check=True, text=True)
    assert proc.stdout.strip() == str(odd)
    blob = bytes(range(256)) * 10
    assert host.run(["cat"], input=blob).stdout == blob
    # A remote non-zero exit is a result (no exception) unless check=True; 255 from the command too.
    assert host.run(["sh", "-c", "exit 3"]).returncode == 3
    assert host.run(["sh", "-c", "exit 255"]).returncode == 255
    with pytest.raises(RemoteError) as ei:
        host.run(["sh", "-c", "echo first >&2; echo 'the real reason' >&2; exit 4"], check=True)
    assert "exit 4" in one_line(ei.value) and "the real reason" in str(ei.value)
    assert ei.value.exit_code == 7
    with pytest.raises(RemoteError, match="timed out"):
        host.run(["sleep", "5"], timeout=1)


def test_parse_spec():
    assert parse_spec("rk3399-lab") == (None, "rk3399-lab", None)
    assert parse_spec("pi@10.0.0.7") == ("pi", "10.0.0.7", None)
    assert parse_spec("10.0.0.7:2222") == (None, "10.0.0.7", 2222)
    assert parse_spec("pi@board.lan:22") == ("pi", "board.lan", 22)
    assert parse_spec("root@[fe80::1]:2200") == ("root", "fe80::1", 2200)
    assert parse_spec("fe80::1") == (None, "fe80::1", None)
    for bad in ("-oProxyCommand=sh", "a b", "host:port", "h:70000", "@h", ""):
        with pytest.raises(RemoteError):
            parse_spec(bad)


def test_boards_add_list_check_roundtrip(ssh_board, tmp_path):
    inv = tmp_path / "cfg" / "boards.toml"
    assert load_boards(inv) == {}
    b1 = Board(name="b1", host=ssh_board.name, target="x86-host", workdir=str(ssh_board.workdir))
    add_board(inv, b1)
    add_board(inv, Board(name="pi", host="pi@192.0.2.7:2222", target="rpi4", workdir="~/edgecls"))
    data = tomllib.loads(inv.read_text())
    assert data["boards"]["pi"]["workdir"] == "edgecls"  # "~/" means relative to the remote home
    assert set(load_boards(inv)) == {"b1", "pi"}
    with pytest.raises(EdgeclsError, match="already exists"):
        add_board(inv, b1)
    add_board(inv, Board(name="b1", host=ssh_board.name, target="x86-host",
                         workdir=str(ssh_board.workdir), python="python3"), replace=True)
    with pytest.raises(EdgeclsError, match="unknown target"):
        add_board(inv, Board(name="bad", host="h", target="no-such-board"))
    with pytest.raises(EdgeclsError, match="known boards: b1, pi"):
        get_board("nope", inv)
    assert [b.name for b in resolve_boards("all", inv)] == ["b1", "pi"]
    assert [b.name for b in resolve_boards("pi,b1", inv)] == ["pi", "b1"]
    with pytest.raises(EdgeclsError, match="unknown board 'zz'"):
        resolve_boards("b1,zz", inv)

    board = get_board("b1", inv)
    with connect(board, ssh_config=ssh_board.ssh_config) as host:
        info = check_board(board, host, inventory=inv)
    assert info["arch"] == os.uname().machine and info["nproc"] == os.cpu_count()
    assert info["kernel"] == os.uname().release
    assert info["glibc"] and info["glibc"][0].isdigit()
    assert info["workdir"] == str(ssh_board.workdir) and ssh_board.workdir.is_dir()
    assert info["disk_free_kb"] > 0
    assert info["tools"]["rsync"] and info["tools"]["sha256sum"]
    assert info["warnings"] == [] and info["ok"], info["warnings"]
    assert get_board("b1", inv).last_seen == info["last_seen"]
    assert "onnxruntime" in info["python_packages"]

    # Wrong arch for the target, no emulator: a clear warning. With an emulator the board lacks:
    # a different one.
    with connect(board, ssh_config=ssh_board.ssh_config) as host:
        arm = Board(name="arm", host=ssh_board.name, target="rk3399", workdir=str(ssh_board.workdir))
        w = check_board(arm, host, inventory=inv)["warning"]
        assert "is x86_64 but target rk3399 is aarch64" in w
        emu = Board(name="emu", host=ssh_board.name, target="rk3399", workdir=str(ssh_board.workdir),
                    emulator=("/nonexistent/qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"))
        w = check_board(emu, host, inventory=inv)["warning"]
        assert "emulator '/nonexistent/qemu-aarch64' not found" in w and "is x86_64" not in w

    remove_board(inv, "pi")
    assert set(load_boards(inv)) == {"b1"}
    with pytest.raises(EdgeclsError, match="unknown board"):
        remove_board(inv, "pi")


def test_deploy_redeploy_replace_and_corruption(board, tmp_path):
    b, host = board
    logs = []
    v1 = make_artifact(tmp_path / "v1" / "digits-x86", small_files("v1"))
    res = deploy(v1, b, host, log=logs.append)
    remote = Path(res.remote_path)
    assert remote == b_workdir(b) / "digits-x86" and not res.reused
    assert res.files == 5 and res.uploaded_bytes >= 12000
    assert_tree_equal(v1, remote)
    assert verify_remote(b, host, res.remote_path, v1) == []

    again = deploy(v1, b, host, log=logs.append)
    assert again.reused and again.uploaded_bytes == 0
    assert "already deployed" in logs[-1]

    # A new version of the same artifact (one file changed): swapped in, only changes sent.
    files = small_files("v2")
    v2_files = dict(files)
    for rel in ("model.so", "edgecls-runner", "lib/libtvm_runtime.so"):
        v2_files[rel] = (v1 / rel).read_bytes()
    v2 = make_artifact(tmp_path / "v2" / "digits-x86", v2_files)
    assert manifest_id(v2) != manifest_id(v1)
    inode_before = remote.stat().st_ino
    res2 = deploy(v2, b, host, log=logs.append)
    assert not res2.reused and res2.remote_path == res.remote_path
    assert_tree_equal(v2, remote)
    assert remote.stat().st_ino != inode_before  # a new directory moved into place
    assert res2.uploaded_bytes < 3000, res2  # labels.txt + manifest.json, not the 12 KB of binaries
    leftovers = [p.name for p in b_workdir(b).iterdir() if p.name.startswith(".")]
    assert leftovers == []

    # Corruption on the board: verify_remote names the file; the next deploy repairs only it.
    st = (remote / "model.so").stat()
    data = bytearray((remote / "model.so").read_bytes())
    data[100] ^= 0xFF
    (remote / "model.so").write_bytes(bytes(data))
    os.utime(remote / "model.so", ns=(st.st_atime_ns, st.st_mtime_ns))  # bit rot: same size, mtime
    (remote / "labels.txt").unlink()
    problems = verify_remote(b, host, res.remote_path, v2)
    assert sorted(problems) == ["labels.txt: missing", "model.so: checksum mismatch"]
    res3 = deploy(v2, b, host, log=logs.append)
    assert not res3.reused and verify_remote(b, host, res.remote_path, v2) == []
    # rsync's size+mtime check took the rotten model.so for current; the checksum caught it
    assert any("failed verification" in m and "sending them again" in m for m in logs), logs
    assert_tree_equal(v2, remote)


def b_workdir(b: Board) -> Path:
    return Path(b.workdir)


def test_upload_falls_back_to_scp_without_remote_rsync(board, tmp_path):
    b, host = board
    src = make_artifact(tmp_path / "a" / "art", small_files())
    host.rsync_path = "/nonexistent/rsync"  # as on a board without rsync
    up = host.upload(src, f"{b.workdir}/plain")
    assert up.method == "scp" and up.files == 5
    assert_tree_equal(src, b_workdir(b) / "plain")
    res = deploy(src, b, host, log=lambda m: None)  # deploy falls back the same way
    assert verify_remote(b, host, res.remote_path, src) == []


def test_connection_refused(ssh_board):
    port = free_port()
    with pytest.raises(RemoteError) as ei:
        SshHost(f"127.0.0.1:{port}", ssh_config=ssh_board.ssh_config).run(["true"])
    assert f"connection refused on 127.0.0.1:{port}" in one_line(ei.value)
    assert ei.value.exit_code == 7


def test_wrong_key_refused(ssh_board, tmp_path):
    other = keygen(tmp_path / "other_key")
    cfg = tmp_path / "ssh_config_wrong_key"
    cfg.write_text(ssh_board.ssh_config.read_text().replace(str(ssh_board.client_key), str(other)))
    with pytest.raises(RemoteError) as ei:
        SshHost("board1", ssh_config=cfg).run(["true"])
    assert one_line(ei.value) == "key refused by board1 (check IdentityFile / authorized_keys)"


def test_host_key_changed_and_unknown(ssh_board, tmp_path):
    ssh_board.write_known_hosts(keygen(tmp_path / "impostor"))
    with pytest.raises(RemoteError) as ei:
        SshHost("board1", ssh_config=ssh_board.ssh_config).run(["true"])
    assert "host key of board1 CHANGED" in one_line(ei.value) and "MITM" in str(ei.value)
    assert ei.value.exit_code == 7
    # accept-new never overrides a changed key
    with pytest.raises(RemoteError, match="CHANGED"):
        SshHost("board1", ssh_config=ssh_board.ssh_config, accept_new_host_key=True).run(["true"])

    ssh_board.known_hosts.write_text("")
    with pytest.raises(RemoteError, match="not in known_hosts; connect once with ssh, or pass "
                                          "--accept-new-host-key"):
        SshHost("board1", ssh_config=ssh_board.ssh_config).run(["true"])
    with SshHost("board1", ssh_config=ssh_board.ssh_config, accept_new_host_key=True) as host:
        assert host.run(["echo", "ok"], text=True).stdout == "ok\n"
    assert "ssh-ed25519" in ssh_board.known_hosts.read_text()


def test_hung_server_times_out(ssh_board):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    held = []
    stop = threading.Event()

    def accept_and_say_nothing():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept_and_say_nothing, daemon=True)
    t.start()
    try:
        host = SshHost(f"127.0.0.1:{listener.getsockname()[1]}", ssh_config=ssh_board.ssh_config,
                       connect_timeout=2)
        start = time.monotonic()
        with pytest.raises(RemoteError, match="timed out"):
            host.run(["true"], timeout=20)
        assert time.monotonic() - start < 6
        assert held, "the listener never saw the connection"
    finally:
        stop.set()
        t.join()
        for s in held:
            s.close()
        listener.close()


def test_board_freezing_mid_command_times_out(ssh_board):
    # Either path ends in "timed out": the command's session via the control master (keep-alives
    # unanswered), or, if the master was not up yet, a new connection (no banner: ConnectTimeout).
    host = SshHost("board1", ssh_config=ssh_board.ssh_config, connect_timeout=3)
    host.server_alive_interval, host.server_alive_count_max = 1, 2  # 5 s x 3 by default
    host.run(["true"], check=True)  # the control master exists; the next command reuses it
    threading.Timer(0.5, ssh_board.freeze).start()
    start = time.monotonic()
    with pytest.raises(RemoteError, match="timed out") as ei:
        host.run(["sleep", "30"])
    assert time.monotonic() - start < 8
    assert "board board1" in one_line(ei.value)


def test_disk_full_keeps_previous_artifact(board, tmp_path):
    b, host = board
    wd = b_workdir(b)
    wd.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "edgecls-test", str(wd)],
                           check=False, capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        v1 = make_artifact(tmp_path / "v1" / "art", small_files())
        res = deploy(v1, b, host, log=lambda m: None)
        big = small_files("v2")
        big["model.so"] = os.urandom(2 << 20)
        v2 = make_artifact(tmp_path / "v2" / "art", big)
        with pytest.raises(RemoteError) as ei:
            deploy(v2, b, host, log=lambda m: None)
        assert "No space left on device on board b1" in one_line(ei.value)
        assert not [p for p in wd.iterdir() if p.name.startswith(".")]  # partial upload removed
        assert verify_remote(b, host, res.remote_path, v1) == []
        assert_tree_equal(v1, Path(res.remote_path))
    finally:
        host.close()
        subprocess.run(["umount", "-l", str(wd)], check=False, capture_output=True)


def test_sshd_killed_mid_upload_then_resume(board, ssh_board, tmp_path):
    b, host = board
    v1 = make_artifact(tmp_path / "v1" / "art", small_files())
    res = deploy(v1, b, host, log=lambda m: None)
    big = small_files("v2")
    big["model.so"] = os.urandom(20 << 20)
    v2 = make_artifact(tmp_path / "v2" / "art", big)

    def kill_when_half_way_there():
        # Kill sshd once rsync's temp file for model.so holds a few MB (about 1 s in at 5 MB/s).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            sizes = []
            for t in Path(b.workdir).glob(".incoming-*/.model.so.*"):
                with contextlib.suppress(FileNotFoundError):
                    sizes.append(t.stat().st_size)
            if max(sizes, default=0) >= (3 << 20):
                break
            time.sleep(0.05)
        ssh_board.kill()

    killer = threading.Thread(target=kill_when_half_way_there)
    killer.start()
    start = time.monotonic()
    with pytest.raises(RemoteError) as ei:
        deploy(v2, b, host, log=lambda m: None, bwlimit_kbps=5000)  # ~4 s for 20 MB
    killer.join()
    assert time.monotonic() - start < 15
    assert f"board {b.name}" in one_line(ei.value)
    assert_tree_equal(v1, Path(res.remote_path))  # the deployed version is untouched

    ssh_board.start()  # same port, same keys
    assert verify_remote(b, host, res.remote_path, v1) == []
    res2 = deploy(v2, b, host, log=lambda m: None)
    assert not res2.reused and verify_remote(b, host, res2.remote_path, v2) == []
    assert_tree_equal(v2, Path(res2.remote_path))
    # rsync --partial kept what arrived before the crash: the resumed upload sends less than all
    assert res2.uploaded_bytes < (20 << 20), res2


def test_parallel_boards_in_network_namespaces(netns_boards):
    assert len(netns_boards) == 3

    def probe(entry):
        name, cfg, workdir = entry
        with SshHost(name, ssh_config=cfg) as host:
            out = host.run(["sh", "-c", 'echo "$SSH_CONNECTION"; mkdir -p "$1" && echo ok', "sh",
                            str(workdir)], check=True, text=True, timeout=30).stdout.split()
        return out

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(probe, netns_boards))
    server_ips = [r[2] for r in results]
    assert len(set(server_ips)) == 3 and all(ip.startswith("10.231.0.") for ip in server_ips)
    assert all(r[-1] == "ok" for r in results)
    for _, _, workdir in netns_boards:
        assert workdir.is_dir()
