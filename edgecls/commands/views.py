"""View helpers shared by several commands: the stdout console, number formats, the stages table.

Command modules import this inside their functions: rich costs ~60 ms, which `edgecls --help`
should not pay.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)  # warnings, and progress while stdout holds JSON


def fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def verbose_log(verbose: bool):
    """A log callback: dim lines on the console with --verbose, nothing without."""
    return (lambda msg: console.print(f"[dim]{msg}[/dim]", highlight=False)) if verbose else (lambda msg: None)


def stages_table(stages: list[dict]) -> Table:
    """Accuracy (on how many images), size and MACs after every optimization stage."""
    table = Table(title="accuracy at every stage")
    for col in ("stage", "top-1", "top-5", "images", "params", "MACs", "size", "note"):
        table.add_column(col, justify="left" if col in ("stage", "note") else "right")
    for st in stages:
        note = st.get("method") or st.get("how") or (f"ratio {st['ratio']}" if "ratio" in st else "")
        if st.get("carried"):  # the batch boards report on-device top-1 on
            note += f"; carried {st['carried']['n']}: top-1 {st['carried']['top1']:.4f}"
        table.add_row(st["stage"], fmt(st.get("top1"), ".4f"), fmt(st.get("top5"), ".4f"), fmt(st.get("n"), "d"),
                      f"{st['params']:,}" if st.get("params") else "-", f"{st['macs']:,}" if st.get("macs") else "-",
                      human_size(st["size_bytes"]) if st.get("size_bytes") else "-", note)
    return table
