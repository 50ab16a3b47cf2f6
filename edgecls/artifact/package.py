"""Atomic directories: build in a temp dir beside the destination, rename when complete.

A crash, Ctrl-C or full disk leaves no half-written artifact under the user's output name, and an
existing artifact is replaced only with `force`, after the new one is complete. The cache entries
of runners (native.py) and TVM runtimes (runtime_libs.py) are published the same way.
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
        tmp = temp_dir_beside(out_dir, f".{out_dir.name}.partial-")
    except OSError as exc:
        raise _os_error(exc, parent) from None
    try:
        yield tmp
        if out_dir.exists() and not force:
            raise UsageError(f"output {out_dir} already exists; pass --force to replace it")
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; an artifact is shared like any build output
        publish_dir(tmp, out_dir, replace=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _os_error(exc, out_dir) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def temp_dir_beside(final: Path, prefix: str) -> Path:
    """A fresh dir in final's parent: the same filesystem, so publish_dir's rename is atomic."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))


def publish_dir(tmp: Path, final: Path, replace: bool = False, taken=lambda: False) -> None:
    """Rename the complete dir `tmp` to `final` in one step: readers see the old, no or the new
    entry, never a partial one.

    replace: an existing `final` is moved aside first, put back if the rename fails, deleted after.
    taken(): asked when the rename fails; True when a concurrent writer published `final` first,
    then theirs is kept and `tmp` is left to the caller to delete.
    """
    aside = None
    if replace and final.exists():
        aside = temp_dir_beside(final, f".{final.name}.old-")
        os.rename(final, aside / "x")
    try:
        os.rename(tmp, final)
    except OSError:
        if not taken():
            if aside is not None:
                os.rename(aside / "x", final)  # put the previous one back
            raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _os_error(exc: OSError, where: Path) -> EdgeclsError:
    if exc.errno == errno.ENOSPC:
        return EdgeclsError(f"no space left on device while writing {where}; nothing was written")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return EdgeclsError(f"permission denied writing {where}: {exc.strerror}")
    return EdgeclsError(f"cannot write {where}: {exc.strerror or exc}")
