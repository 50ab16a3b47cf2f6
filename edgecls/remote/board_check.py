"""`edgecls boards check`: what a board is (arch, glibc, cores, governors, disk, thermals) read
over SSH in one shell script, checked against its target, and its last_seen kept in the inventory."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from edgecls.errors import RemoteError
from edgecls.remote.boards import ARCH_ALIASES, MIN_GLIBC, Board, _set_last_seen, inventory_path
from edgecls.remote.ssh import SshHost
from edgecls.targets import get_target

# $1 workdir, $2 python, $3 emulator (may be empty). One key=value per line; never fails.
CHECK_SCRIPT = r"""
w=$1; py=$2; emu=$3
echo "arch=$(uname -m)"
echo "kernel=$(uname -r)"
g=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')
[ -n "$g" ] || g=$(ldd --version 2>&1 | head -n 1 | awk '{print $NF}')
echo "glibc=$g"
n=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null)
echo "nproc=$n"
for c in /sys/devices/system/cpu/cpu[0-9]*; do
  [ -d "$c" ] || continue
  f=$c/cpufreq
  echo "cpu.${c##*/cpu}=$(cat "$f/scaling_governor" 2>/dev/null),$(cat "$f/cpuinfo_max_freq" 2>/dev/null)"
done
if mkdir -p -- "$w" 2>/dev/null && [ -w "$w" ]; then
  echo "workdir=$(cd -- "$w" && pwd)"
  echo "disk_free_kb=$(df -Pk -- "$w" 2>/dev/null | awk 'NR==2 {print $4}')"
else
  echo "workdir_error=cannot create or write $w"
fi
for z in /sys/class/thermal/thermal_zone*; do
  [ -r "$z/temp" ] || continue
  echo "thermal.${z##*thermal_zone}=$(cat "$z/type" 2>/dev/null):$(cat "$z/temp" 2>/dev/null)"
done
for t in rsync sha256sum; do echo "tool.$t=$(command -v "$t" 2>/dev/null)"; done
echo "tool.python=$(command -v "$py" 2>/dev/null)"
t=$(command -v trtexec 2>/dev/null)
[ -n "$t" ] || { [ -x /usr/src/tensorrt/bin/trtexec ] && t=/usr/src/tensorrt/bin/trtexec; }
echo "tool.trtexec=$t"
if [ -n "$emu" ]; then echo "emulator=$(command -v "$emu" 2>/dev/null)"; fi
if command -v "$py" >/dev/null 2>&1; then
  "$py" - <<'EOF' 2>/dev/null
import sys
print("python_version=%d.%d.%d" % sys.version_info[:3])
try:
    from importlib import metadata
except ImportError:
    metadata = None
import importlib
for mod, dists in (("onnxruntime", ("onnxruntime", "onnxruntime-gpu")),
                   ("ai_edge_litert", ("ai-edge-litert",))):
    v = ""
    for d in dists:
        try:
            v = metadata.version(d)
            break
        except Exception:
            pass
    if not v:
        try:
            import importlib.util
            v = "present" if importlib.util.find_spec(mod) else ""
        except Exception:
            v = ""
    print("py.%s=%s" % (mod, v))
EOF
fi
echo "check_done=1"
"""


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:2])


def parse_check(out: str) -> dict:
    kv: dict[str, str] = {}
    for line in out.splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            kv[k.strip()] = v.strip()
    cpus, thermal, tools, py = [], [], {}, {}
    for k, v in kv.items():
        if k.startswith("cpu."):
            gov, _, mx = v.partition(",")
            cpus.append({"cpu": int(k[4:]), "governor": gov or None,
                         "max_khz": int(mx) if mx.isdigit() else None})
        elif k.startswith("thermal."):
            typ, _, temp = v.rpartition(":")
            try:
                t = int(temp)
                temp_c = t / 1000 if abs(t) > 200 else float(t)
            except ValueError:
                temp_c = None
            thermal.append({"zone": int(k[8:]) if k[8:].isdigit() else k[8:], "type": typ, "temp_c": temp_c})
        elif k.startswith("tool."):
            tools[k[5:]] = v or None
        elif k.startswith("py."):
            py[k[3:]] = v or None
    cpus.sort(key=lambda c: c["cpu"])
    thermal.sort(key=lambda z: str(z["zone"]).zfill(4))
    return {
        "arch": kv.get("arch"), "kernel": kv.get("kernel"), "glibc": kv.get("glibc") or None,
        "nproc": int(kv["nproc"]) if kv.get("nproc", "").isdigit() else None,
        "cpus": cpus,
        "workdir": kv.get("workdir"), "workdir_error": kv.get("workdir_error"),
        "disk_free_kb": int(kv["disk_free_kb"]) if kv.get("disk_free_kb", "").isdigit() else None,
        "thermal": thermal, "tools": tools,
        "python_version": kv.get("python_version"),
        "python_packages": py,
        "emulator_path": kv.get("emulator"),
        "complete": kv.get("check_done") == "1",
    }


def check_board(board: Board, ssh: SshHost, inventory: str | Path | None = None,
                targets_dir: str | Path | None = None, timeout: float = 60) -> dict:
    """One ssh round trip: what the board is, and whether it fits its target.

    Returns a dict (arch, kernel, glibc, nproc, cpus[{cpu, governor, max_khz}], workdir,
    disk_free_kb, thermal[{zone, type, temp_c}], tools{rsync, sha256sum, python, trtexec},
    python_packages{onnxruntime, ai_edge_litert}, warnings[...], warning (joined or None), ok,
    last_seen). Updates last_seen in the inventory when the board is in it.
    Raises RemoteError when the board cannot be reached.
    """
    emu = board.emulator[0] if board.emulator else ""
    proc = ssh.run(["sh", "-c", CHECK_SCRIPT, "edgecls-check", board.workdir, board.python, emu],
                   timeout=timeout, text=True)
    info = parse_check(proc.stdout)
    if not info["complete"]:
        raise RemoteError(f"checking board {board.name} failed (exit {proc.returncode}): "
                          f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
    warnings = []
    target = get_target(board.target, targets_dir)
    arch = ARCH_ALIASES.get(info["arch"] or "", info["arch"])
    info["target"] = target.name
    info["target_arch"] = target.arch
    if board.emulator:
        if not info["emulator_path"]:
            warnings.append(f"emulator '{emu}' not found on board {board.name}; "
                            f"install it there (e.g. apt-get install qemu-user)")
    elif arch != target.arch:
        warnings.append(f"board {board.name} is {info['arch']} but target {target.name} is "
                        f"{target.arch}: its artifacts will not run there (wrong target, or set "
                        f"an emulator for this board)")
    if info["glibc"] and target.arch == arch and _version_tuple(info["glibc"]) < MIN_GLIBC:
        warnings.append(f"board {board.name} has glibc {info['glibc']}; the native runner needs "
                        f">= {'.'.join(map(str, MIN_GLIBC))}")
    if info["workdir_error"]:
        warnings.append(f"workdir on board {board.name}: {info['workdir_error']}")
    if not info["tools"].get("sha256sum"):
        warnings.append(f"sha256sum missing on board {board.name}: deploys cannot be verified")
    info["warnings"] = warnings
    info["warning"] = "; ".join(warnings) or None
    info["ok"] = not warnings
    info["name"] = board.name
    info["host"] = board.host
    now = datetime.now(UTC).isoformat(timespec="seconds")
    info["last_seen"] = now
    path = inventory_path(inventory)
    if path.exists():
        _set_last_seen(path, board.name, now)
    return info
