"""Report figures as PNG bytes (matplotlib's Agg canvas; no pyplot, no display, no global state).

- latency: median per board and runtime/variant, bars with a whisker up to p90
- accuracy: top-1 on device against median latency, the Pareto front marked
- runs: the distribution of the per-run timings of each row (box plots)

A figure with nothing to show is not drawn: all_pngs leaves it out and left_out says why, so a
page never carries an empty panel.
"""

from __future__ import annotations

import io

from edgecls.errors import EdgeclsError
from edgecls.report.load import Row

DPI = 110


def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise EdgeclsError("plots need matplotlib: pip install 'matplotlib==3.11.2'") from None
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": "edgecls"})
    return buf.getvalue()


def _uniform(rows: list[Row], attr: str) -> bool:
    return len({getattr(r, attr) for r in rows}) <= 1


def group_label(r: Row, rows: list[Row]) -> str:
    label = f"{r.board}\n{r.target}"
    extra = []
    if not _uniform(rows, "threads"):
        extra.append(f"thr {'-' if r.threads == 'default' else r.threads}")
    if not _uniform(rows, "cores"):
        extra.append(f"cpu {r.cores}")
    return label + ("\n" + " ".join(extra) if extra else "")


# Why a figure is left out: the reason shown in its place (HTML) or instead of its file (--plot).
EMPTY_REASONS = {"latency": "no report carries a median latency",
                 "accuracy": "no report carries both top-1 on device and a median latency",
                 "runs": "no report carries per-run timings"}


def _series(r: Row, rows: list[Row], sep: str = " ") -> str:
    """A bar's legend entry: runtime and variant, with the model when the rows hold several."""
    model = [] if _uniform(rows, "model") else [r.model.partition("@")[0]]
    return sep.join([*model, r.runtime, r.variant])


def latency_png(rows: list[Row]) -> bytes | None:
    timed = [r for r in rows if r.median is not None]
    if not timed:
        return None
    groups = list(dict.fromkeys(group_label(r, timed) for r in timed))
    series = list(dict.fromkeys(_series(r, timed) for r in timed))
    longest = max(len(s) for s in series)
    fig = _figure(max(6.0, 1.2 + 0.55 * len(groups) * max(1, len(series))), 4.4 + 0.2 * ((len(series) + 1) // 2))
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    for i, s in enumerate(series):
        xs, heights, up = [], [], []
        for g, name in enumerate(groups):
            hit = next((r for r in timed if group_label(r, timed) == name and _series(r, timed) == s), None)
            if hit is None:
                continue
            xs.append(g - 0.4 + width * (i + 0.5))
            heights.append(hit.median)
            up.append(max(0.0, (hit.p90 or hit.median) - hit.median))
        bars = ax.bar(xs, heights, width * 0.92, label=s, yerr=[[0] * len(up), up], capsize=3,
                      error_kw={"elinewidth": 1, "ecolor": "#333"})
        ax.bar_label(bars, labels=[f"{h:.3g}" for h in heights], fontsize=7, padding=2)
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_ylabel("latency ms (bar: median, whisker: p90)")
    ax.set_title("latency per board and variant")
    # Under the axes: long labels (model, int8-static-perchannel-u8) would cover the bars.
    fig.legend(fontsize=8, ncols=min(2 if longest > 24 else 4, len(series)), loc="outside lower center")
    top, low = max((r.p90 or r.median) for r in timed), min(r.median for r in timed)
    if low > 0 and top / low > 30:  # a fast and a slow board side by side: log, or the fast bar vanishes
        ax.set_yscale("log")
        ax.set_ylim(low / 2, top * 3)
        ax.set_ylabel("latency ms, log scale (bar: median, whisker: p90)")
    else:
        ax.set_ylim(0, top * 1.25)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def pareto_front(points: list[tuple[float, float, object]]) -> list:
    """Items not beaten by another that is at least as fast and at least as accurate (and better in one)."""
    front = []
    for lat, acc, item in points:
        dominated = any(l2 <= lat and a2 >= acc and (l2 < lat or a2 > acc) for l2, a2, _ in points)
        if not dominated:
            front.append(item)
    return front


def accuracy_png(rows: list[Row]) -> bytes | None:
    pts = [(r.median, r.top1, r) for r in rows if r.median is not None and r.top1 is not None]
    if not pts:
        return None
    fig = _figure(6.4, 4.4)
    ax = fig.add_subplot()
    front = pareto_front(pts)
    others = [p for p in pts if p[2] not in front]
    if others:
        ax.scatter([p[0] for p in others], [p[1] for p in others], c="#999", label="dominated", zorder=2)
    fr = sorted((p for p in pts if p[2] in front), key=lambda p: p[0])
    ax.plot([p[0] for p in fr], [p[1] for p in fr], "-o", c="#d62728", drawstyle="steps-post",
            label="Pareto front", zorder=3)
    for i, (lat, acc, r) in enumerate(sorted(pts, key=lambda p: p[0])):
        ax.annotate(f"{r.board}:{_series(r, rows, sep=':')}", (lat, acc), fontsize=7, textcoords="offset points",
                    xytext=(4, 5 if i % 2 == 0 else -11))  # alternate above/below: neighbours overlap less
    skipped = len(rows) - len(pts)
    ax.set_title("top-1 on device vs median latency" + (f" ({skipped} row(s) without top-1)" if skipped else ""))
    ax.set_xlabel("median latency ms (lower is better)")
    ax.set_ylabel("top-1 on device")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    ax.margins(0.15)
    return _png(fig)


def runs_png(rows: list[Row]) -> bytes | None:
    with_runs = [r for r in rows if len(r.runs) >= 2]
    if not with_runs:
        return None
    labels = ["\n".join([r.board, _series(r, with_runs, sep="\n"),
                         f"thr {'-' if r.threads == 'default' else r.threads} cpu {r.cores}"]) for r in with_runs]
    chars = max(len(line) for label in labels for line in label.splitlines())  # a box as wide as its label
    fig = _figure(max(6.0, 1.5 + max(0.7, 0.065 * chars) * len(with_runs)), 4.6)
    ax = fig.add_subplot()
    ax.boxplot([r.runs for r in with_runs], tick_labels=labels, showfliers=True,
               flierprops={"markersize": 3, "alpha": 0.5})
    ax.tick_params(axis="x", labelsize=7)
    ax.set_ylabel("latency per run ms")
    lo = min(min(r.runs) for r in with_runs)
    hi = max(max(r.runs) for r in with_runs)
    if lo > 0 and hi / lo > 20:
        ax.set_yscale("log")
    ax.set_title(f"latency per run ({len(rows) - len(with_runs)} row(s) without per-run timings)"
                 if len(with_runs) < len(rows) else "latency per run")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def all_pngs(rows: list[Row]) -> dict[str, bytes]:
    """name -> PNG bytes, in page order, of the figures that have something to show."""
    drawn = {"latency": latency_png(rows), "accuracy": accuracy_png(rows), "runs": runs_png(rows)}
    return {name: png for name, png in drawn.items() if png is not None}


def left_out(pngs: dict[str, bytes]) -> dict[str, str]:
    """name -> why, for the figures all_pngs did not draw."""
    return {name: why for name, why in EMPTY_REASONS.items() if name not in pngs}
