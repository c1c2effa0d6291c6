"""PNG bar charts of a run: one file per workload, one panel per measure.

Needs matplotlib (the ``bench`` extra).  The files are small on purpose
(palette PNGs of a few tens of KB) so that they can be committed next to
bench/RESULTS.md, which links them.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only

import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter

from bench.workloads import Measure, Workload

COLORS = {
    "smartsocket": "#d9480f",
    "smartsocket-nodeflate": "#f59f00",
    "smartsocket-history": "#74b816",
    "c-reference": "#495057",
    "picows-raw": "#74c0fc",
    "socketio-node": "#69db7c",
    "python-socketio": "#b197fc",
}
LOG_SPAN = 20.0  # log scale when the largest value is more than this many times the smallest


def _human(v: float, _pos: object = None) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            x = v / div
            return f"{x:.0f}{suffix}" if x >= 10 else f"{x:.1f}{suffix}"
    return f"{v:.0f}" if v >= 10 else f"{v:.2g}"


def _label(v: float, unit: str) -> str:
    if unit.startswith("p50"):
        return f"{v / 1000:.1f} ms" if v >= 1000 else f"{v:.0f} µs"
    if unit.startswith("KiB"):
        return f"{v:.1f} KiB"
    return _human(v)


def _panel(
    ax: Any, m: Measure, rows: dict[str, Any], log_ok: bool, title: str = "", unit: str = ""
) -> bool:
    peers = [(p, r) for p, r in rows.items() if r.get("metric")]
    if not peers:
        ax.set_axis_off()
        return False
    names = [p for p, _ in peers]
    vals = [float(r["metric"]) for _, r in peers]
    y = list(range(len(names)))
    ax.barh(y, vals, color=[COLORS.get(n, "#adb5bd") for n in names], height=0.65)
    latency = m.unit.startswith("p50")
    if latency:  # p99 as a tick on the p50 bar
        p99 = [float(r.get("lat_p99_us") or 0) for _, r in peers]
        ax.scatter(p99, y, marker="|", s=120, color="black", zorder=3)
    lo, hi = min(vals), max(vals + ([max(p99)] if latency else []))
    use_log = log_ok and lo > 0 and hi / lo > LOG_SPAN
    if use_log:
        ax.set_xscale("log")
        ax.set_xlim(lo / 2.5, hi * 6)
    else:
        ax.set_xlim(0, hi * 1.3)
    ax.xaxis.set_major_formatter(FuncFormatter(_human))
    for yi, v in zip(y, vals, strict=True):
        ax.text(v, yi, " " + _label(v, m.unit), va="center", ha="left", fontsize=7)
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    better = "higher is better" if m.higher_is_better else "lower is better"
    scale = ", log scale" if use_log else ""
    what = "bar: p50, tick: p99, " if latency else ""
    ax.set_title(f"{title or m.title}\n{unit or m.unit} ({what}{better}{scale})", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return True


def workload_chart(
    wl: Workload, summary: dict[str, Any], meta: dict[str, Any], path: Path
) -> Path | None:
    panels: list[tuple[Measure, dict[str, Any], str, str]] = []
    for m in wl.measures:
        rows = summary.get(m.key, {})
        if not any(r.get("metric") for r in rows.values()):
            continue
        panels.append((m, rows, "", ""))
        if m.chart_extra:
            key, title, unit = m.chart_extra
            xrows = {
                p: {"metric": (r.get("extra") or {}).get(key)}
                for p, r in rows.items()
                if (r.get("extra") or {}).get(key)
            }
            if xrows:
                xm = Measure(
                    key=f"{m.key}/{key}",
                    title=title,
                    unit=unit,
                    higher_is_better=False,
                    args=m.args,
                    metric=m.metric,
                    window_s=m.window_s,
                )
                panels.append((xm, xrows, title, unit))
    if not panels:
        return None
    npeers = max(len(rows) for _, rows, _, _ in panels)
    fig, axes = plt.subplots(
        1, len(panels), figsize=(3.9 * len(panels), 0.32 * npeers + 1.3), squeeze=False
    )
    for ax, (m, rows, title, unit) in zip(axes[0], panels, strict=True):
        _panel(ax, m, rows, wl.chart_log and not title, title, unit)
    o = meta.get("options", {})
    mode = "quick" if o.get("quick") else f"median of {o.get('repeat')}"
    fig.suptitle(f"{wl.name} ({meta.get('started_utc', '')}, {mode})", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # a palette PNG is several times smaller than matplotlib's RGBA output
        from PIL import Image

        buf.seek(0)
        img = Image.open(buf).convert("RGB").quantize(colors=64)
        img.save(path, format="PNG", optimize=True)
    except Exception:
        path.write_bytes(buf.getvalue())
    return path
