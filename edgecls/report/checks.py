"""Why a benchmark number should not be trusted: the flags shown in every report row.

Reads the CPU facts the harness sampled before and after the timed runs (governor, current and
maximum frequency, temperatures, the harness' own throttled flag) plus the pinning. Each flag is
a short phrase; an empty list means nothing suspicious was seen (or nothing could be seen: a
container without cpufreq reports no frequencies, and then no frequency flag is raised).
"""

from __future__ import annotations

import functools

HOT_C = 80.0  # SoCs start throttling around 80-85 C
BELOW_MAX = 0.95  # the harness' own threshold for "throttled"
NOISY = 2.0  # p90 more than twice the median: the runs were disturbed


def _samples(system: dict) -> list[dict]:
    if not isinstance(system, dict):
        return []
    return [s for s in (system.get("before"), system.get("after")) if isinstance(s, dict)]


def _cpus(sample: dict) -> dict:
    cpus = sample.get("cpus")
    return {k: v for k, v in cpus.items() if isinstance(v, dict)} if isinstance(cpus, dict) else {}


def _khz(cpu: dict, *names) -> int | None:
    for n in names:
        v = cpu.get(n)
        if isinstance(v, (int, float)) and v > 0:
            return v
    return None


def freq_ratio(system: dict) -> float | None:
    """Lowest current/max frequency seen on a sampled CPU (None: no cpufreq data)."""
    ratios = []
    for s in _samples(system):
        for cpu in _cpus(s).values():
            cur, top = _khz(cpu, "cur_khz"), _khz(cpu, "cpuinfo_max_khz", "max_khz")
            if cur and top:
                ratios.append(cur / top)
    return min(ratios) if ratios else None


def freq_cap(system: dict) -> float | None:
    """scaling_max / cpuinfo_max when someone capped the clock (None when not capped or unknown)."""
    caps = []
    for s in _samples(system):
        for cpu in _cpus(s).values():
            cap, top = _khz(cpu, "scaling_max_khz"), _khz(cpu, "cpuinfo_max_khz")
            if cap and top and cap < top:
                caps.append(cap / top)
    return min(caps) if caps else None


def max_temp(system: dict) -> float | None:
    temps = [v for s in _samples(system) if isinstance(s.get("thermal"), dict)
             for v in s["thermal"].values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return max(temps) if temps else None


@functools.lru_cache(maxsize=32)
def _clusters(target_name: str) -> dict:
    from edgecls.errors import EdgeclsError
    from edgecls.targets import get_target
    try:
        return dict(get_target(target_name).cpus)
    except (EdgeclsError, OSError):  # an unknown or user-defined target: the sampled frequencies decide
        return {}


def big_little_mix(report: dict, cores: list[int] | None, target_name: str) -> str | None:
    """The run could use CPUs of different speed (pinned across clusters, or not pinned at all)."""
    system = report.get("system")
    sampled = {}
    for s in _samples(system):
        for cid, cpu in _cpus(s).items():
            top = _khz(cpu, "cpuinfo_max_khz", "max_khz")
            if top:
                sampled[str(cid)] = top
    used = {str(c) for c in cores} if cores else set(sampled)
    speeds = {sampled[c] for c in used if c in sampled}
    if len(speeds) > 1:
        return "big/little mix (max " + "/".join(f"{s / 1e6:.1f}" for s in sorted(speeds)) + " GHz)"
    clusters = {k: set(map(str, v)) for k, v in _clusters(target_name).items() if v}
    if len(clusters) > 1:
        if not cores:
            return "big/little mix (not pinned)"
        touched = [k for k, ids in clusters.items() if used & ids]
        if len(touched) > 1:
            return f"big/little mix ({'+'.join(sorted(touched))})"
    return None


def row_warnings(report: dict, row) -> list[str]:
    system = report.get("system") if isinstance(report.get("system"), dict) else {}
    board = report.get("board") if isinstance(report.get("board"), dict) else {}
    if isinstance(report.get("instructions"), dict):  # bench --count: no clock, no cores, no system
        return [f"emulated instructions under qemu -cpu {report['instructions'].get('cpu', '?')}, not time"]
    warn = []
    ratio = freq_ratio(system)
    if system.get("throttled") or (ratio is not None and ratio < BELOW_MAX):
        warn.append("throttled" + (f" (clock down to {ratio:.0%} of max)" if ratio is not None else ""))
    cap = freq_cap(system)
    if cap is not None:
        warn.append(f"frequency capped at {cap:.0%} of max")
    governors = {c.get("governor") for s in _samples(system) for c in _cpus(s).values()}
    odd = sorted(g for g in governors - {None, "performance"} if isinstance(g, str))
    if odd:
        warn.append("governor " + ",".join(odd))
    temp = max_temp(system)
    if temp is not None and temp >= HOT_C:
        warn.append(f"hot ({temp:.0f} C)")
    cores = report.get("cores") if isinstance(report.get("cores"), list) else None
    if cores is None:
        options = report.get("options") if isinstance(report.get("options"), dict) else {}
        resolved = options.get("cores_resolved")
        cores = resolved if isinstance(resolved, list) else None
    mix = big_little_mix(report, cores, row.target)
    if mix:
        warn.append(mix)
    if board.get("kind") == "emulated" or board.get("emulator"):
        warn.append("emulated: not board time")
    if row.median and row.p90 and row.p90 > NOISY * row.median:
        warn.append(f"noisy (p90 {row.p90 / row.median:.1f}x median)")
    ref = report.get("reference")
    if isinstance(ref, dict) and ref.get("top1_match") is False:
        warn.append("output differs from reference")
    if not system:
        warn.append("no system facts")
    return warn
