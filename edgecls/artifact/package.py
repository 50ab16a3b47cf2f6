"""Atomic artifact directories: build in a temp dir beside the destination, rename when complete.

A crash, Ctrl-C or full disk leaves no half-written artifact under the user's output name, and an
existing artifact is replaced only with `force`, after the new one is complete.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

from edgecls.errors import EdgeclsError, UsageError


def check_destination(out_dir: Path, force: bool) -> None:
    """Fail before any work is done when the output exists and may not be replaced."""
    if out_dir.exists() and not force:
        raise UsageError(f"output {out_dir} already exists; pass --force to replace it")
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"output {out_dir} exists and is not a directory")


@contextlib.contextmanager
def staging_dir(out_dir: Path, force: bool):
    """Yield a temp dir on the same filesystem; on success move it to out_dir atomically."""
    out_dir = Path(out_dir)
    check_destination(out_dir, force)
    parent = out_dir.parent if str(out_dir.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=parent))
    except OSError as exc:
        raise _os_error(exc, parent) from None
    try:
        yield tmp
        _publish(tmp, out_dir, force)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _os_error(exc, out_dir) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, out_dir: Path, force: bool) -> None:
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700; an artifact is shared like any build output
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    if not force:
        raise UsageError(f"output {out_dir} already exists; pass --force to replace it")
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except OSError:
        os.rename(old, out_dir)  # put the previous artifact back
        raise
    shutil.rmtree(old, ignore_errors=True)


def _os_error(exc: OSError, where: Path) -> EdgeclsError:
    if exc.errno == errno.ENOSPC:
        return EdgeclsError(f"no space left on device while writing {where}; nothing was written")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return EdgeclsError(f"permission denied writing {where}: {exc.strerror}")
    return EdgeclsError(f"cannot write {where}: {exc.strerror or exc}")
