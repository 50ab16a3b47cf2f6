"""Parsers of TensorRT / Jetson tool output for bench_trt.py (standalone, stdlib only).

trtexec's log and --exportTimes/--exportProfile/--exportOutput JSON, tegrastats lines, nvpmodel,
jetson_clocks and /etc/nv_tegra_release: each a plain function of text, tested on real-format
files in tests/data. Shipped in the artifact's harness/ next to bench_trt.py and bench_py.py.
"""

from __future__ import annotations

import ast
import json
import os
import re
import statistics
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_py import as_int  # noqa: E402  (sibling file in harness/)


class HarnessError(Exception):
    """A tool's output could not be used; bench_trt turns it into one error line."""

_LOG_PREFIX = re.compile(r"^\[\d\d/\d\d/\d{4}-\d\d:\d\d:\d\d\] \[([VIWEF])\] ")
_BANNER = re.compile(r"^&&&& (RUNNING|PASSED|FAILED|WAIVED) (\S+) \[TensorRT v(\d+)\](?: # (.*))?$")
_NUM = r"[-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|inf|nan)"
_STAT = re.compile(r"(min|max|mean|median|percentile\((" + _NUM + r")%\)) = (" + _NUM + r") ms")
SUMMARY_KEYS = {"Latency": "latency", "End-to-End Host Latency": "end_to_end", "Enqueue Time": "enqueue",
                "H2D Latency": "h2d", "GPU Compute Time": "gpu_compute", "D2H Latency": "d2h"}
TIME_FIELDS = {"latency": "latencyMs", "gpu_compute": "computeMs", "h2d": "h2dMs", "d2h": "d2hMs"}
_TS_RAIL = re.compile(r"(?<![\w@])([A-Z][A-Z0-9_]*) (\d+)(?:mW/(\d+)mW|mW|/(\d+))(?=\s|$)")
_TS_TEMP = re.compile(r"(?<![\w%])([A-Za-z][\w-]*)@(-?\d+(?:\.\d+)?)C(?=\s|$)")
_TS_GR3D = re.compile(r"GR3D_FREQ (\d+)%(?:@\[?([\d,]+)\]?)?")
_TS_EMC = re.compile(r"EMC_FREQ (\d+)%(?:@(\d+))?")
_TS_RAM = re.compile(r"RAM (\d+)/(\d+)MB")
_TS_CPU = re.compile(r"CPU \[([^\]]*)\]")


def as_float(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


# ---- trtexec text log ---------------------------------------------------------------------------

# "[04/19/2024-14:23:17] [I] text"; the TensorRT logger's own lines add "[TRT] " after the severity.
def version_from_banner_number(n: int) -> str:
    """NV_TENSORRT_VERSION as printed in '[TensorRT v8602]' (8.x: M*1000+m*100+p) or
    '[TensorRT v100300]' (10.x: M*10000+m*100+p)."""
    if n >= 10000:
        return f"{n // 10000}.{n % 10000 // 100}.{n % 100}"
    return f"{n // 1000}.{n % 1000 // 100}.{n % 100}"


def version_tuple(version: str | None) -> tuple:
    """'8.6.2' -> (8, 6, 2); unknown -> a version newer than any, so current trtexec flags are used."""
    return tuple(int(p) for p in re.findall(r"\d+", version or "")[:3]) or (99,)


def _pkey(q: str) -> str:
    v = float(q)
    return "p" + (str(int(v)) if v == int(v) else str(v))


def parse_summary_stats(text: str) -> dict:
    """'min = 0.5 ms, max = 0.9 ms, mean = ..., median = ..., percentile(90%) = ... ms' -> dict."""
    out = {}
    for m in _STAT.finditer(text):
        name = _pkey(m.group(2)) if m.group(2) is not None else m.group(1)
        out[name] = float(m.group(3))
    return out


def _device_field(dev: dict, key: str, val: str) -> None:
    """One 'key: value' line of the log's '=== Device Information ===' section into dev."""
    if key == "Selected Device":
        dev["name"] = val
    elif key == "Compute Capability":
        dev["compute_capability"] = val
    elif key == "SMs":
        dev["sms"] = as_int(val)
    elif key == "Device Global Memory":
        dev["memory_mib"] = as_int(val.split()[0])
    elif key.endswith("Compute Clock Rate"):
        dev["compute_clock_ghz"] = as_float(val.split()[0])
    elif key.endswith("Memory Clock Rate"):
        dev["memory_clock_ghz"] = as_float(val.split()[0])


def parse_trtexec_log(text: str) -> dict:
    """Everything edgecls uses from a trtexec stdout log (TensorRT 8.4 .. 10.x formats)."""
    out = {"status": None, "tensorrt_version": None, "command": None, "precision": None,
           "device": {}, "engine_build_s": None, "engine_load_s": None, "engine_size_mib": None,
           "warmup": None, "trace": None, "throughput_qps": None, "summary": {},
           "total_host_walltime_s": None, "total_gpu_compute_s": None, "gpu_compute_cv_pct": None,
           "warnings": [], "errors": []}
    section = None
    for raw in text.splitlines():
        raw = raw.rstrip()
        m = _BANNER.match(raw)
        if m:
            out["status"] = m.group(1)
            out["tensorrt_version"] = out["tensorrt_version"] or version_from_banner_number(int(m.group(3)))
            out["command"] = out["command"] or m.group(4)
            continue
        m = _LOG_PREFIX.match(raw)
        sev, line = (m.group(1), raw[m.end():]) if m else (None, raw)
        if sev in ("E", "F"):
            out["errors"].append(line)
            continue
        if line.startswith("=== ") and line.endswith(" ==="):
            section = line.strip("= ").strip()
            continue
        if sev == "W":
            if len(out["warnings"]) < 20:
                out["warnings"].append(line)
            m = re.search(r"coefficient of variance = (" + _NUM + r")%", line)
            if m:
                out["gpu_compute_cv_pct"] = float(m.group(1))
            continue
        key, _, val = line.partition(": ")
        if section == "Device Information" and val:
            _device_field(out["device"], key, val)
        if key == "TensorRT version":
            out["tensorrt_version"] = val.strip()
        elif key == "Precision" and section == "Build Options":
            out["precision"] = val.strip()
        elif key == "Throughput":
            out["throughput_qps"] = as_float(val.split()[0])
        elif key in SUMMARY_KEYS:
            out["summary"][SUMMARY_KEYS[key]] = parse_summary_stats(val)
        elif key == "Total Host Walltime":
            out["total_host_walltime_s"] = as_float(val.split()[0])
        elif key == "Total GPU Compute Time":
            out["total_gpu_compute_s"] = as_float(val.split()[0])
        m = re.match(r"Engine (built|loaded) in (" + _NUM + r") sec", line)
        if m:
            out["engine_build_s" if m.group(1) == "built" else "engine_load_s"] = float(m.group(2))
        m = re.match(r"(?:Created|Loaded) engine with size: (" + _NUM + r") MiB", line)
        if m:
            out["engine_size_mib"] = float(m.group(1))
        m = re.match(r"Warmup completed (\d+) queries over (" + _NUM + r") ms", line)
        if m:
            out["warmup"] = {"queries": int(m.group(1)), "ms": float(m.group(2))}
        m = re.match(r"Timing trace has (\d+) queries over (" + _NUM + r") s", line)
        if m:
            out["trace"] = {"queries": int(m.group(1)), "s": float(m.group(2))}
    return out


# ---- trtexec JSON exports -----------------------------------------------------------------------

def parse_export_times(records, warmup_ms: float | None = None) -> dict:
    """--exportTimes JSON (list of per-inference records) -> per-metric lists in ms.

    Field names are those of sampleReporting.cpp exportJSONTrace: startEnqMs, endEnqMs,
    startH2dMs, endH2dMs, startComputeMs, endComputeMs, startD2hMs, endD2hMs, h2dMs, computeMs,
    d2hMs, latencyMs (and endToEndMs before TensorRT 8.4). TensorRT < 8.5 also wrote the warm-up
    queries; with warmup_ms given they are dropped by trtexec's own rule (a query is warm-up while
    its compute started before the warm-up time ended), a no-op for newer files.
    """
    recs = [r for r in records if isinstance(r, dict) and "latencyMs" in r]
    if warmup_ms:
        recs = [r for r in recs if float(r.get("startComputeMs", warmup_ms)) >= warmup_ms]
    out = {k: [float(r[f]) for r in recs if f in r] for k, f in TIME_FIELDS.items()}
    out["enqueue"] = [float(r["endEnqMs"]) - float(r["startEnqMs"]) for r in recs
                      if "endEnqMs" in r and "startEnqMs" in r]
    out["end_to_end"] = [float(r["endToEndMs"]) for r in recs if "endToEndMs" in r]
    out["count"] = len(recs)
    if recs and "startH2dMs" in recs[0] and "endD2hMs" in recs[-1]:
        out["span_ms"] = float(recs[-1]["endD2hMs"]) - float(recs[0]["startH2dMs"])
    return out


def parse_export_profile(records, top: int = 15) -> dict:
    """--exportProfile JSON: [{"count": N}, {"name", "timeMs", "averageMs", "medianMs"?, "percentage"}, ...]."""
    count = next((r["count"] for r in records if isinstance(r, dict) and "count" in r), None)
    layers = [{"name": r["name"], "total_ms": r.get("timeMs"), "avg_ms": r.get("averageMs"),
               "median_ms": r.get("medianMs"), "percent": r.get("percentage")}
              for r in records if isinstance(r, dict) and "name" in r]
    layers.sort(key=lambda layer: -(layer["total_ms"] or 0))
    return {"iterations": count, "layers": len(layers),
            "avg_ms_per_iteration": sum(layer["avg_ms"] or 0 for layer in layers) if layers else None,
            "top_layers": layers[:top]}


def parse_export_output(records) -> dict:
    """--exportOutput JSON: [{"name", "dimensions": "1x10", "values": [...]}, ...] -> name -> (dims, values)."""
    out = {}
    for r in records:
        if isinstance(r, dict) and "name" in r:
            dims = [int(d) for d in str(r.get("dimensions", "")).split("x") if d.strip().isdigit()]
            out[r["name"]] = (dims, [float(v) for v in r.get("values", [])])
    return out


def load_json_lenient(text: str):
    """trtexec writes C++ float formatting: 'inf'/'nan' are not JSON; make them parse."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        fixed = re.sub(r"(?<=[\s:\[,])(-?)(inf|nan)(?=\s*[,\]}])", lambda m: '"' + m.group(1) + m.group(2) + '"', text)
        return json.loads(fixed, parse_constant=float)


# ---- Jetson tools -------------------------------------------------------------------------------

def parse_tegrastats_line(line: str) -> dict | None:
    """One tegrastats line (Nano r32, Xavier r32/r35, Orin r35/r36 formats) -> dict, or None."""
    if "RAM " not in line and "GR3D_FREQ" not in line and "VDD_" not in line and "POM_" not in line:
        return None
    s = {"rails_mw": {}, "rails_avg_mw": {}, "temps_c": {}}
    for name, inst, avg_mw, avg_plain in _TS_RAIL.findall(line):
        s["rails_mw"][name] = int(inst)
        if avg_mw or avg_plain:
            s["rails_avg_mw"][name] = int(avg_mw or avg_plain)
    for name, temp in _TS_TEMP.findall(line):
        s["temps_c"][name.lower()] = float(temp)
    m = _TS_GR3D.search(line)
    if m:
        s["gr3d_pct"] = int(m.group(1))
        freqs = [int(f) for f in (m.group(2) or "").split(",") if f]
        s["gpu_mhz"] = max(freqs) if freqs else None
    m = _TS_EMC.search(line)
    if m:
        s["emc_pct"], s["emc_mhz"] = int(m.group(1)), as_int(m.group(2))
    m = _TS_RAM.search(line)
    if m:
        s["ram_used_mb"], s["ram_total_mb"] = int(m.group(1)), int(m.group(2))
    m = _TS_CPU.search(line)
    if m:
        loads = [as_int(c.split("%")[0]) for c in m.group(1).split(",") if "%" in c]
        s["cpu_load_pct"] = [v for v in loads if v is not None]
    return s


def _minmeanmax(values) -> dict | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"mean": round(statistics.fmean(vals), 3), "min": min(vals), "max": max(vals)}


def summarize_tegrastats(lines, interval_ms: int | None = None) -> dict:
    samples = [s for s in (parse_tegrastats_line(ln) for ln in lines) if s]
    rails = sorted({k for s in samples for k in s["rails_mw"]})
    temps = sorted({k for s in samples for k in s["temps_c"]})
    return {
        "samples": len(samples), "interval_ms": interval_ms,
        "rails_mw": {r: _minmeanmax(s["rails_mw"].get(r) for s in samples) for r in rails},
        "gr3d_pct": _minmeanmax(s.get("gr3d_pct") for s in samples),
        "gpu_mhz": _minmeanmax(s.get("gpu_mhz") for s in samples),
        "emc_pct": _minmeanmax(s.get("emc_pct") for s in samples),
        "emc_mhz": _minmeanmax(s.get("emc_mhz") for s in samples),
        "temps_c": {t: _minmeanmax(s["temps_c"].get(t) for s in samples) for t in temps},
        "ram_used_mb_max": max((s["ram_used_mb"] for s in samples if "ram_used_mb" in s), default=None),
        "ram_total_mb": next((s["ram_total_mb"] for s in samples if "ram_total_mb" in s), None),
    }


def parse_nvpmodel(text: str) -> dict:
    """`nvpmodel -q`: 'NV Power Mode: 15W' then the mode id on its own line (warnings may precede)."""
    out = {"mode": None, "id": None}
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if ln.startswith("NV Power Mode:"):
            out["mode"] = ln.split(":", 1)[1].strip()
            if i + 1 < len(lines) and lines[i + 1].isdigit():
                out["id"] = int(lines[i + 1])
    return out


def _kv(text: str) -> dict:
    return dict(re.findall(r"(\w+)=(\S+)", text))


def parse_jetson_clocks(text: str) -> dict:
    """`jetson_clocks --show`: CPU governors/frequencies, GPU and EMC min/max/current, power mode."""
    out = {"soc_family": None, "machine": None, "cpus": {}, "gpu": None, "emc": None, "power_mode": None}
    for ln in text.splitlines():
        ln = ln.strip()
        m = re.match(r"SOC family:(\S+)\s+Machine:(.*)$", ln)
        if m:
            out["soc_family"], out["machine"] = m.group(1), m.group(2).strip()
            continue
        m = re.match(r"(cpu\d+):\s*(.*)$", ln)
        if m:
            kv = _kv(m.group(2))
            out["cpus"][m.group(1)] = {"online": kv.get("Online") == "1", "governor": kv.get("Governor"),
                                       "min_khz": as_int(kv.get("MinFreq")), "max_khz": as_int(kv.get("MaxFreq")),
                                       "cur_khz": as_int(kv.get("CurrentFreq"))}
            continue
        m = re.match(r"(GPU|EMC) (MinFreq=.*)$", ln)
        if m:
            kv = _kv(m.group(2))
            out[m.group(1).lower()] = {"min_hz": as_int(kv.get("MinFreq")), "max_hz": as_int(kv.get("MaxFreq")),
                                       "cur_hz": as_int(kv.get("CurrentFreq"))}
            continue
        if ln.startswith("NV Power Mode:"):
            out["power_mode"] = ln.split(":", 1)[1].strip()
    gpu, emc = out["gpu"] or {}, out["emc"] or {}
    out["gpu_at_max"] = (gpu.get("cur_hz") == gpu.get("max_hz")) if gpu.get("max_hz") else None
    out["emc_at_max"] = (emc.get("cur_hz") == emc.get("max_hz")) if emc.get("max_hz") else None
    return out


def parse_tegra_release(text: str | None) -> str | None:
    """/etc/nv_tegra_release: '# R36 (release), REVISION: 3.0, GCID: ...' -> 'R36.3.0'."""
    m = re.search(r"R(\d+) \(release\), REVISION: ([\d.]+)", text or "")
    return f"R{m.group(1)}.{m.group(2)}" if m else None


# ---- npy without numpy (the board may have none) ------------------------------------------------

def read_npy(path: str):
    """-> (shape, descr, raw little-endian C-order bytes)."""
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise HarnessError(f"{path} is not a .npy file")
        major = f.read(2)[0]
        hlen = struct.unpack("<H", f.read(2))[0] if major == 1 else struct.unpack("<I", f.read(4))[0]
        header = ast.literal_eval(f.read(hlen).decode("latin1"))
        data = f.read()
    if header.get("fortran_order"):
        raise HarnessError(f"{path}: Fortran-ordered arrays are not supported")
    return tuple(header["shape"]), header["descr"], data


def npy_floats(path: str) -> list[float]:
    _shape, descr, data = read_npy(path)
    codes = {"<f4": "f", "<f8": "d", "<f2": "e"}
    if descr not in codes:
        raise HarnessError(f"{path}: dtype {descr} is not a little-endian float")
    n = len(data) // struct.calcsize(codes[descr])
    return list(struct.unpack(f"<{n}{codes[descr]}", data[:n * struct.calcsize(codes[descr])]))


# ---- the board ----------------------------------------------------------------------------------

