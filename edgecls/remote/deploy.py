"""Deploy an artifact directory to a board: atomic, verified, resumable.

    <workdir>/.incoming-<id12>/   the upload lands here (kept on failure: the next deploy resumes)
    <workdir>/<artifact name>/    the deployed artifact, replaced only by a verified upload

1. The local artifact must pass its own checksums (`require_intact`).
2. One round trip: create the incoming dir, see whether the board already holds this manifest
   (same sha256 of manifest.json) and whether those files verify: then nothing is uploaded.
3. rsync (-a --partial; scp when rsync is missing) into the incoming dir; unchanged files of the
   currently deployed version are copied on the board instead of sent (`--copy-dest`).
4. `sha256sum -c` on the board against a list made from the manifest (plus manifest.json itself);
   files that fail are sent again once, then the deploy fails.
5. Swap: move the old artifact aside, move the new one in, delete the old one.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edgecls.artifact.manifest import (
    MANIFEST,
    manifest_id,
    read_manifest,
    require_intact,
)
from edgecls.errors import ArtifactError, RemoteError
from edgecls.remote.boards import Board
from edgecls.remote.ssh import SshHost


@dataclass(frozen=True)
class DeployResult:
    remote_path: str  # relative to the remote home unless the board's workdir is absolute
    uploaded_bytes: int
    files: int
    reused: bool  # True: the board already held this exact artifact, nothing was sent


def remote_path_for(board: Board, artifact_name: str) -> str:
    return str(PurePosixPath(board.workdir) / artifact_name)


def checksum_list(manifest: dict, manifest_sha256: str | None = None) -> str:
    """`sha256sum -c` input for the manifest's files (and manifest.json when its hash is known)."""
    lines = []
    entries = list(manifest.get("files", {}).items())
    if manifest_sha256:
        entries.append((MANIFEST, {"sha256": manifest_sha256}))
    for rel, info in entries:
        p = PurePosixPath(rel)
        if p.is_absolute() or ".." in p.parts or any(c in rel for c in "\n\r\\"):
            raise ArtifactError(f"manifest lists an unsafe file name: {rel!r}")
        lines.append(f"{info['sha256']}  {rel}\n")
    return "".join(lines)


def _parse_check(out: str, expected: list[str]) -> list[str]:
    """Problems from `sha256sum -c` output (GNU or BusyBox)."""
    ok, failed, missing = set(), set(), set()
    for line in out.splitlines():
        line = line.rstrip()
        if line.endswith(": OK"):
            ok.add(line[:-4])
        elif line.endswith(": FAILED open or read"):
            missing.add(line[: -len(": FAILED open or read")])
        elif line.endswith(": FAILED"):
            failed.add(line[:-8])
        elif "No such file or directory" in line or "can't open" in line:
            for rel in expected:
                if f"'{rel}'" in line or f": {rel}:" in line:
                    missing.add(rel)
    problems = []
    for rel in expected:
        if rel in missing:
            problems.append(f"{rel}: missing")
        elif rel in failed:
            problems.append(f"{rel}: checksum mismatch")
        elif rel not in ok:
            problems.append(f"{rel}: not checked")
    return problems


VERIFY_SCRIPT = r"""
cd -- "$1" 2>/dev/null || { echo "@nodir"; exit 0; }
command -v sha256sum >/dev/null 2>&1 || { echo "@nosha"; exit 0; }
sha256sum -c - 2>&1
echo "@rc=$?"
"""


def _verify(ssh: SshHost, label: str, remote_path: str, manifest: dict,
            manifest_sha256: str | None) -> list[str]:
    sums = checksum_list(manifest, manifest_sha256)
    expected = [ln.split("  ", 1)[1] for ln in sums.splitlines()]
    proc = ssh.run(["sh", "-c", VERIFY_SCRIPT, "edgecls-verify", remote_path],
                   input=sums.encode(), timeout=600, text=True)
    out = proc.stdout
    if "@nodir" in out.splitlines():
        return [f"{remote_path}: not on board {label}"]
    if "@nosha" in out.splitlines():
        raise RemoteError(f"sha256sum not found on board {label}: cannot verify files")
    if "@rc=" not in out:
        raise RemoteError(f"verifying {remote_path} on board {label} failed: "
                          f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
    return _parse_check(out, expected)


def verify_remote(board: Board, ssh: SshHost, remote_path: str, manifest: dict | str | Path,
                  *, manifest_sha256: str | None = None) -> list[str]:
    """Problems with the artifact at remote_path on the board (empty: intact).

    manifest: the manifest dict, or the local artifact directory (then manifest.json itself is
    checked too). With a dict, pass manifest_sha256 (`manifest_id(local_dir)`) to check it as well.
    """
    if isinstance(manifest, (str, Path)):
        manifest_sha256 = manifest_sha256 or manifest_id(manifest)
        manifest = read_manifest(manifest)
    return _verify(ssh, board.name, remote_path, manifest, manifest_sha256)


PREFLIGHT_SCRIPT = r"""
w=$1; name=$2; inc=$3; mid=$4
mkdir -p -- "$w/$inc" || { echo "@mkdir_failed"; exit 0; }
if command -v rsync >/dev/null 2>&1; then echo "@rsync=1"; else echo "@rsync=0"; fi
command -v sha256sum >/dev/null 2>&1 || { echo "@nosha"; exit 0; }
if [ -f "$w/$name/manifest.json" ]; then
  m=$(sha256sum < "$w/$name/manifest.json" | awk '{print $1}')
  echo "@dest_manifest=$m"
  if [ "$m" = "$mid" ]; then
    (cd -- "$w/$name" && sha256sum -c - 2>&1); rc=$?
    echo "@rc=$rc"
    [ "$rc" != 0 ] || rmdir -- "$w/$inc" 2>/dev/null  # nothing to upload: no empty dir left behind
  fi
elif [ -e "$w/$name" ]; then
  echo "@dest_other=1"
fi
"""

SWAP_SCRIPT = r"""
w=$1; name=$2; inc=$3; tag=$4
cd -- "$w" || exit 3
old=".old-$name-$tag-$$"
if [ -e "$name" ] || [ -L "$name" ]; then mv -- "$name" "$old" || exit 4; fi
if ! mv -- "$inc" "$name"; then
  if [ -e "$old" ]; then mv -- "$old" "$name"; fi
  exit 5
fi
rm -rf -- "$old" ".old-$name-"*
find . -maxdepth 1 -name '.incoming-*' -mtime +1 -exec rm -rf {} + 2>/dev/null
exit 0
"""


def _preflight(ssh: SshHost, board: Board, args: list[str], sums: str, incoming: str,
               timeout: float | None) -> subprocess.CompletedProcess:
    """Run PREFLIGHT_SCRIPT (make the incoming dir, check the deployed copy); one-line errors."""
    pre = ssh.run(["sh", "-c", PREFLIGHT_SCRIPT, "edgecls-deploy", *args],
                  input=sums.encode(), timeout=600 if timeout is None else timeout, text=True)
    lines = pre.stdout.splitlines()
    if "@mkdir_failed" in lines:
        err = (pre.stderr.strip().splitlines() or ["mkdir failed"])[-1]
        if "No space left" in err:
            raise RemoteError(f"No space left on device on board {board.name} creating {incoming}")
        raise RemoteError(f"cannot create {incoming} on board {board.name}: {err}")
    if "@nosha" in lines:
        raise RemoteError(f"sha256sum not found on board {board.name}: cannot verify a deploy")
    return pre


def _upload_verified(ssh: SshHost, board: Board, artifact_dir: Path, files: list, incoming: str,
                     identity: tuple[dict, str], log, *, method: str, basis: str | None,
                     timeout: float | None, bwlimit_kbps: int | None) -> int:
    """Upload into `incoming`, check every file's sha256 there, send the bad ones once more.
    Returns the bytes sent; RemoteError when files still differ (the board's disk or memory)."""
    manifest, mid = identity
    name = artifact_dir.name
    try:
        up = ssh.upload(files, incoming, timeout=timeout, bwlimit_kbps=bwlimit_kbps, method=method,
                        basis_dir=basis, create=False)
    except RemoteError as exc:
        if "No space left" in str(exc):
            # Resuming cannot help a full disk: give the space of the partial upload back.
            try:
                ssh.run(["rm", "-rf", "--", incoming], timeout=60)
            except RemoteError:
                pass
            raise RemoteError(f"{exc} (partial upload removed; {remote_path_for(board, name)} untouched)") from None
        raise
    sent = up.bytes_sent
    problems = _verify(ssh, board.name, incoming, manifest, mid)
    if problems:
        bad = [p.split(":", 1)[0] for p in problems]
        log(f"{name}: {len(bad)} file(s) failed verification on {board.name}, sending them again")
        again = [(artifact_dir / rel, rel) for rel in bad]
        sent += ssh.upload(again, incoming, timeout=timeout, bwlimit_kbps=bwlimit_kbps,
                           method=up.method, force=True, create=False).bytes_sent
        problems = _verify(ssh, board.name, incoming, manifest, mid)
        if problems:
            raise RemoteError(f"files uploaded to board {board.name} still fail their checksums "
                              f"after a second upload: {'; '.join(problems[:3])} (disk or memory "
                              f"errors on the board?)")
    return sent


def deploy(artifact_dir: Path, board: Board, ssh: SshHost, log=print, *,
           bwlimit_kbps: int | None = None, timeout: float | None = None) -> DeployResult:
    """Put artifact_dir on the board as <workdir>/<artifact dir name>; see the module docstring.

    Raises ArtifactError (local artifact broken) or RemoteError (board unreachable, disk full,
    upload interrupted, files corrupted on the board); the previously deployed artifact is
    untouched by any failure.
    """
    artifact_dir = Path(artifact_dir).resolve()
    manifest = require_intact(artifact_dir)
    mid = manifest_id(artifact_dir)
    name = artifact_dir.name
    if name.startswith(".") or not name:
        raise ArtifactError(f"artifact directory name '{name}' cannot be deployed (hidden name)")
    workdir = board.workdir
    dest = remote_path_for(board, name)
    inc_name = f".incoming-{mid[:12]}"
    incoming = str(PurePosixPath(workdir) / inc_name)
    sums = checksum_list(manifest, mid)
    expected = [ln.split("  ", 1)[1] for ln in sums.splitlines()]
    rels = list(manifest.get("files", {}))
    files = [(artifact_dir / rel, rel) for rel in rels] + [(artifact_dir / MANIFEST, MANIFEST)]

    pre = _preflight(ssh, board, [workdir, name, inc_name, mid], sums, incoming, timeout)
    lines = pre.stdout.splitlines()
    dest_mid = next((ln.split("=", 1)[1] for ln in lines if ln.startswith("@dest_manifest=")), None)
    dest_exists = dest_mid is not None or "@dest_other=1" in lines
    if dest_mid == mid:
        problems = _parse_check(pre.stdout, expected)
        if not problems:
            log(f"{name}: already deployed on {board.name} at {dest} (verified)")
            return DeployResult(dest, 0, len(files), True)
        log(f"{name} on {board.name} fails its checksums ({'; '.join(problems[:3])}): redeploying")
    have_rsync = "@rsync=1" in lines and shutil.which("rsync") is not None
    method = "rsync" if have_rsync else "scp"
    basis = f"../{name}" if (dest_exists and method == "rsync") else None

    log(f"{name}: uploading {len(files)} files to {board.name}:{incoming} ({method})")
    sent = _upload_verified(ssh, board, artifact_dir, files, incoming, (manifest, mid), log,
                            method=method, basis=basis, timeout=timeout, bwlimit_kbps=bwlimit_kbps)

    swap = ssh.run(["sh", "-c", SWAP_SCRIPT, "edgecls-swap", workdir, name, inc_name, mid[:12]],
                   timeout=600 if timeout is None else timeout, text=True)
    if swap.returncode != 0:
        err = (swap.stderr.strip().splitlines() or [f"exit {swap.returncode}"])[-1]
        raise RemoteError(f"could not move {incoming} to {dest} on board {board.name}: {err}")
    log(f"{name}: deployed to {board.name}:{dest} ({sent} bytes sent, verified)")
    return DeployResult(dest, sent, len(files), False)
