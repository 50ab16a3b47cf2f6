"""The board inventory: a TOML file naming each board, how to reach it, and what it is.

    [boards.rk1]
    host = "rk3399-lab"          # ssh alias from ~/.ssh/config, or user@host:port
    target = "rk3399"            # an edgecls target (edgecls/builtin_targets/*.toml)
    workdir = "edgecls"          # relative to the remote home, or absolute
    emulator = []                # prefix to run binaries, e.g. ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]
    python = "python3"
    last_seen = "2025-01-01T12:00:00+00:00"   # written by `check_board`

File: `--boards FILE`, else `EDGECLS_BOARDS`, else ~/.config/edgecls/boards.toml. Writes are
atomic (temp file + rename, under a lock); comments in the file are not preserved.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from edgecls.errors import EdgeclsError, UsageError
from edgecls.remote.ssh import SshHost, parse_spec
from edgecls.targets import get_target

NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
ARCH_ALIASES = {"arm64": "aarch64", "aarch64": "aarch64", "x86_64": "x86_64", "amd64": "x86_64"}
MIN_GLIBC = (2, 34)  # the native runner's requirement (see edgecls/artifact/native.py)


@dataclass(frozen=True)
class Board:
    name: str
    host: str
    target: str
    workdir: str = "edgecls"
    emulator: tuple[str, ...] = ()
    python: str = "python3"
    last_seen: str | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)  # unknown keys, kept

    def to_toml_dict(self) -> dict:
        d = {"host": self.host, "target": self.target, "workdir": self.workdir,
             "emulator": list(self.emulator), "python": self.python}
        if self.last_seen:
            d["last_seen"] = self.last_seen
        d.update(self.extra)
        return d

    def to_dict(self) -> dict:
        d = asdict(self)
        d["emulator"] = list(self.emulator)
        d.pop("extra")
        return d


def inventory_path(path: str | Path | None = None) -> Path:
    if path:
        return Path(path).expanduser()
    env = os.environ.get("EDGECLS_BOARDS")
    if env:
        return Path(env).expanduser()
    return Path("~/.config/edgecls/boards.toml").expanduser()


def _normalize_workdir(workdir: str) -> str:
    w = str(workdir).strip()
    if w in ("~", "~/"):
        return "."
    w = w.removeprefix("~/")
    if w.startswith("~"):
        raise EdgeclsError(f"workdir '{workdir}': use a path relative to the remote home or an absolute path")
    w = w.rstrip("/") or "/"
    if not w or "\n" in w or "\0" in w:
        raise EdgeclsError(f"bad workdir '{workdir}'")
    return w


def _board_from_table(name: str, table: dict, path: Path) -> Board:
    if not isinstance(table, dict):
        raise EdgeclsError(f"{path}: boards.{name} must be a table")
    for key in ("host", "target"):
        if not isinstance(table.get(key), str) or not table[key]:
            raise EdgeclsError(f"{path}: boards.{name} needs a string '{key}'")
    emulator = table.get("emulator", [])
    if not isinstance(emulator, list) or not all(isinstance(x, str) for x in emulator):
        raise EdgeclsError(f"{path}: boards.{name}.emulator must be a list of strings")
    known = {"host", "target", "workdir", "emulator", "python", "last_seen"}
    return Board(
        name=name, host=table["host"], target=table["target"],
        workdir=_normalize_workdir(table.get("workdir", "edgecls")),
        emulator=tuple(emulator), python=str(table.get("python", "python3")),
        last_seen=str(table["last_seen"]) if table.get("last_seen") else None,
        extra={k: v for k, v in table.items() if k not in known})


def _read(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise EdgeclsError(f"board inventory {path} is not valid TOML: {exc}") from None
    if not isinstance(data.get("boards", {}), dict):
        raise EdgeclsError(f"{path}: 'boards' must be a table of boards")
    return data


def load_boards(path: str | Path | None = None) -> dict[str, Board]:
    """All boards in the inventory, by name (empty when the file does not exist)."""
    path = inventory_path(path)
    data = _read(path)
    return {name: _board_from_table(name, table, path) for name, table in data.get("boards", {}).items()}


# ---- writing --------------------------------------------------------------------------------

def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise EdgeclsError(f"cannot write {type(v).__name__} value to the board inventory")


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k, ensure_ascii=False)


def _dump(data: dict) -> str:
    out = ["# edgecls board inventory (edgecls boards add/remove rewrite this file)"]
    for k, v in data.items():
        if k != "boards":
            out.append(f"{_toml_key(k)} = {_toml_value(v)}")
    for name, table in data.get("boards", {}).items():
        out.append("")
        out.append(f"[boards.{_toml_key(name)}]")
        for k, v in table.items():
            out.append(f"{_toml_key(k)} = {_toml_value(v)}")
    return "\n".join(out) + "\n"


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write(path: Path, data: dict) -> None:
    text = _dump(data)
    tomllib.loads(text)  # never write a file we could not read back
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def validate_board(board: Board, targets_dir: str | Path | None = None) -> Board:
    if not NAME_RE.fullmatch(board.name) or board.name == "all":
        raise UsageError(f"bad board name '{board.name}': use letters, digits, '_', '-', '.' "
                         f"(and not 'all')")
    parse_spec(board.host)  # RemoteError for a malformed address
    get_target(board.target, targets_dir)  # TargetError naming the known targets
    if not all(isinstance(x, str) and x for x in board.emulator):
        raise UsageError(f"board {board.name}: emulator must be a list of non-empty strings")
    if not board.python:
        raise UsageError(f"board {board.name}: python must not be empty")
    return replace(board, workdir=_normalize_workdir(board.workdir), emulator=tuple(board.emulator))


def add_board(path: str | Path | None, board: Board, replace: bool = False,
              targets_dir: str | Path | None = None) -> Board:
    """Add (or with replace=True, overwrite) a board; returns the board as stored."""
    path = inventory_path(path)
    board = validate_board(board, targets_dir)
    with _locked(path):
        data = _read(path)
        boards = data.setdefault("boards", {})
        if board.name in boards and not replace:
            raise EdgeclsError(f"board '{board.name}' already exists in {path}; pass --replace to overwrite it")
        boards[board.name] = board.to_toml_dict()
        _write(path, data)
    return board


def remove_board(path: str | Path | None, name: str) -> None:
    path = inventory_path(path)
    with _locked(path):
        data = _read(path)
        boards = data.get("boards", {})
        if name not in boards:
            raise _unknown(name, boards, path)
        del boards[name]
        _write(path, data)


def _set_last_seen(path: Path, name: str, when: str) -> None:
    with _locked(path):
        data = _read(path)
        table = data.get("boards", {}).get(name)
        if table is None:
            return
        table["last_seen"] = when
        _write(path, data)


def _unknown(name: str, boards: dict, path: Path) -> UsageError:
    if not boards:
        return UsageError(f"unknown board '{name}': no boards in {path}; add one with: edgecls boards add")
    return UsageError(f"unknown board '{name}'; known boards: {', '.join(sorted(boards))} (in {path})")


def get_board(name: str, path: str | Path | None = None) -> Board:
    path = inventory_path(path)
    boards = load_boards(path)
    if name not in boards:
        raise _unknown(name, boards, path)
    return boards[name]


def resolve_boards(spec: str, path: str | Path | None = None) -> list[Board]:
    """"b1,b2" or "all" -> boards, in the order given (inventory order for "all")."""
    path = inventory_path(path)
    boards = load_boards(path)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise UsageError("no board given: name boards as b1,b2 or 'all'")
    if names == ["all"]:
        if not boards:
            raise UsageError(f"no boards in {path}; add one with: edgecls boards add")
        return list(boards.values())
    out = []
    for n in names:
        if n not in boards:
            raise _unknown(n, boards, path)
        if boards[n] not in out:
            out.append(boards[n])
    return out


def connect(board: Board, ssh_config: str | Path | None = None, accept_new_host_key: bool = False,
            connect_timeout: int = 10) -> SshHost:
    """An SshHost for the board (messages name the board)."""
    return SshHost(board.host, ssh_config=ssh_config, accept_new_host_key=accept_new_host_key,
                   connect_timeout=connect_timeout, label=board.name)
