"""File transfer to a board: rsync (resumable, delta) or scp, over the SshHost's connection.

The second half of edgecls.remote.ssh (the only code that runs OpenSSH's clients): SshHost
inherits `upload` from FileTransfer, which uses the host's options, command runner and error
classification, so an upload reuses the control master of the deploy's other commands.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edgecls.errors import RemoteError


def output_lines(stderr: bytes | str) -> list[str]:
    """The non-blank lines of a client's output (\r progress lines split too)."""
    if isinstance(stderr, bytes):
        stderr = stderr.decode("utf-8", "replace")
    return [ln.strip() for ln in stderr.replace("\r", "\n").split("\n") if ln.strip()]


@dataclass(frozen=True)
class UploadResult:
    method: str  # "rsync" or "scp"
    files: int  # files offered for transfer
    bytes_sent: int  # file data actually sent (rsync: literal data, after delta/resume)


class FileTransfer:
    """upload() for SshHost: needs its run, ssh_options, classify, label, rsync_path, _remote_host."""

    def upload(self, local: list[tuple[Path, str]] | str | Path, remote_dir: str, *,
               timeout: float | None = None, bwlimit_kbps: int | None = None,
               method: str = "auto", force: bool = False, basis_dir: str | None = None,
               create: bool = True) -> UploadResult:
        """Copy files into remote_dir (relative to the remote home, or absolute).

        `local` is a directory (its contents are copied, symlinks followed) or a list of
        (local file, path relative to remote_dir). rsync (`-a --partial`) is used when both
        sides have it: an interrupted upload resumes, unchanged files are not sent again. Else scp.
        force: send even files whose size and mtime match (after a failed checksum).
        basis_dir: remote dir (relative to remote_dir) holding older copies rsync may reuse.
        """
        if method not in ("auto", "rsync", "scp"):
            raise ValueError(f"method must be auto, rsync or scp, not {method!r}")
        staging = tempfile.mkdtemp(prefix="edgecls-upload-")
        try:
            os.chmod(staging, 0o755)  # rsync -a gives remote_dir the staging dir's mode
            entries = _stage(local, Path(staging))
            if create:
                self.run(["mkdir", "-p", "--", remote_dir], timeout=timeout, check=True)
            if method == "auto":
                method = "rsync" if shutil.which("rsync") else "scp"
            if method == "rsync":
                try:
                    return self._rsync(staging, entries, remote_dir, timeout, bwlimit_kbps,
                                       force, basis_dir)
                except _RsyncMissing:
                    method = "scp"
            return self._scp(staging, entries, remote_dir, timeout, bwlimit_kbps)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _rsync(self, staging, entries, remote_dir, timeout, bwlimit, force, basis_dir) -> UploadResult:
        cmd = ["rsync", "-a", "-L", "--partial", "--stats", "-e", shlex.join(["ssh", *self.ssh_options()])]
        if self.rsync_path != "rsync":
            cmd.append(f"--rsync-path={self.rsync_path}")
        if bwlimit:
            cmd.append(f"--bwlimit={int(bwlimit)}")
        if force:
            cmd.append("--ignore-times")
        if basis_dir:
            cmd.append(f"--copy-dest={basis_dir}")
        cmd += ["--", f"{staging}/", f"{self._remote_host()}:{remote_dir.rstrip('/')}/"]
        proc = self._transfer(cmd, timeout, remote_dir)
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace")
            if _rsync_missing(err, self.rsync_path):
                raise _RsyncMissing()
            raise self._upload_error(err, remote_dir)
        sent = _stat_bytes(proc.stdout.decode("utf-8", "replace"), "Literal data")
        return UploadResult("rsync", entries, sent)

    def _scp(self, staging, entries, remote_dir, timeout, bwlimit) -> UploadResult:
        tops = sorted(os.listdir(staging))
        if not tops:
            return UploadResult("scp", 0, 0)
        cmd = ["scp", "-r", "-p", "-q", *self.ssh_options()]
        if bwlimit:
            cmd += ["-l", str(int(bwlimit) * 8)]  # scp takes Kbit/s
        cmd += ["--", *(os.path.join(staging, t) for t in tops),
                f"{self._remote_host()}:{remote_dir.rstrip('/')}/"]
        proc = self._transfer(cmd, timeout, remote_dir)
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace")
            if re.search(r": Failure\s*$", err, re.MULTILINE) and self._disk_full(remote_dir):
                err += "\nNo space left on device"  # SFTP reports ENOSPC as a bare "Failure"
            raise self._upload_error(err, remote_dir)
        size = sum(p.stat().st_size for p in Path(staging).rglob("*") if p.is_file())
        return UploadResult("scp", entries, size)

    def _transfer(self, cmd, timeout, remote_dir) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(cmd, check=False, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RemoteError(f"upload to {self.label}:{remote_dir} timed out after {timeout:g} s") from None
        except FileNotFoundError:
            raise RemoteError(f"{cmd[0]} not found on PATH; install it with: apt-get install "
                              f"{'rsync' if cmd[0] == 'rsync' else 'openssh-client'}") from None

    def _disk_full(self, remote_dir: str) -> bool:
        try:
            out = self.run(["df", "-Pk", "--", remote_dir], timeout=30, text=True).stdout
            return int(out.splitlines()[1].split()[3]) < 64
        except (RemoteError, IndexError, ValueError):
            return False

    def _upload_error(self, stderr: str, remote_dir: str) -> RemoteError:
        low = stderr.lower()
        if "no space left on device" in low or "disk quota exceeded" in low:
            return RemoteError(f"No space left on device on board {self.label} while uploading to "
                               f"{remote_dir}; free some space or choose another workdir")
        if "read-only file system" in low:
            return RemoteError(f"cannot write {remote_dir} on board {self.label}: read-only file system")
        reason = self.classify(stderr)
        if reason:
            return RemoteError(reason)
        if "permission denied" in low:
            return RemoteError(f"permission denied on board {self.label} writing {remote_dir}")
        if "connection unexpectedly closed" in low or "error in rsync protocol data stream" in low:
            return RemoteError(f"connection to board {self.label} lost during upload to {remote_dir}")
        lines = [ln for ln in output_lines(stderr) if not ln.startswith("rsync error:")] or output_lines(stderr)
        return RemoteError(f"upload to {self.label}:{remote_dir} failed: "
                           f"{lines[-1] if lines else 'no error output'}")


class _RsyncMissing(Exception):
    pass


def _rsync_missing(stderr: str, rsync_path: str) -> bool:
    name = re.escape(rsync_path)
    return bool(re.search(rf"{name}: (command )?not found|{name}: No such file or directory", stderr))


def _stat_bytes(stats: str, key: str) -> int:
    m = re.search(rf"^{key}:\s*([\d,.']+)", stats, re.MULTILINE)
    return int(re.sub(r"\D", "", m.group(1))) if m else 0


def _stage(local, staging: Path) -> int:
    """Lay out symlinks under staging mirroring the remote tree; returns the number of files."""
    if isinstance(local, (str, Path)):
        root = Path(local)
        if not root.is_dir():
            raise RemoteError(f"cannot upload {root}: not a directory")
        pairs = [(p, p.relative_to(root).as_posix()) for p in sorted(root.rglob("*")) if p.is_file()]
    else:
        pairs = [(Path(p), str(rel)) for p, rel in local]
    for path, rel in pairs:
        relp = PurePosixPath(rel)
        if relp.is_absolute() or ".." in relp.parts or not relp.parts:
            raise RemoteError(f"cannot upload {path} as '{rel}': remote names must be relative")
        if not path.is_file():
            raise RemoteError(f"cannot upload {path}: no such file")
        dst = staging.joinpath(*relp.parts)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(path.resolve())
    return len(pairs)
