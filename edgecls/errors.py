"""The one error type users see: a single line, a non-zero exit code, no traceback."""

from __future__ import annotations


class EdgeclsError(Exception):
    """An error a user can act on. `cli.main` prints `error: <message>` and exits with `exit_code`."""

    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None):
        # Collapse to one line: the CLI contract is one line per error.
        super().__init__(" ".join(str(message).split()))
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(EdgeclsError):
    """Bad option values or combinations (exit 2, like click's own usage errors)."""

    exit_code = 2


class ModelError(EdgeclsError):
    """Missing, corrupt or unsupported model file."""

    exit_code = 3


class TargetError(EdgeclsError):
    """Unknown or malformed target description."""

    exit_code = 4


class ToolchainError(EdgeclsError):
    """A required external tool (cross compiler, qemu) is missing or failed."""

    exit_code = 5


class ArtifactError(EdgeclsError):
    """Missing, incomplete or tampered artifact directory."""

    exit_code = 6


class RemoteError(EdgeclsError):
    """A board is unreachable, refuses us, fails a command, or runs out of disk."""

    exit_code = 7


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty).

    Library errors (ONNX checker, TF, torch.export) span many lines with the cause first;
    an EdgeclsError is one line, so wrappers quote only this one.
    """
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def last_line(exc: BaseException) -> str:
    """The last line of an exception's message (its type name when the message is empty): TVM
    and ONNX Runtime errors start with a C++ traceback and end with the cause."""
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__
