"""A chart of a run, to see it at a glance: orders/s and latency percentiles per second.

HTML output is one self-contained file with inline SVG (no scripts, no network). A `.png`
is drawn with matplotlib when it is installed.
"""

from __future__ import annotations

import html
import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path

from jetsaga.load.figures import Point
from jetsaga.load.report import Report

_W, _H, _L, _R, _T, _B = 900, 260, 64, 16, 28, 36  # size and margins of one panel
_COLOURS = {
    "sent": "#9e9e9e",
    "accepted": "#1f77b4",
    "final": "#2ca02c",
    "p50": "#2ca02c",
    "p95": "#ff7f0e",
    "p99": "#d62728",
}


class ChartError(ValueError):
    """The chart cannot be written in the asked-for format."""


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten that is at least `value` (> 0)."""
    if value <= 0:
        return 1.0
    base = 10.0 ** math.floor(math.log10(value))
    return next(float(m * base) for m in (1, 2, 5, 10) if m * base >= value)


def _panel(
    title: str,
    unit: str,
    xs: Sequence[int],
    series: dict[str, Sequence[float | None]],
    warmup_s: float = 0.0,
) -> str:
    top = nice_ceiling(max((v for s in series.values() for v in s if v is not None), default=1))
    x_max = max(max(xs, default=0), 1)
    pw, ph = _W - _L - _R, _H - _T - _B

    def x(t: float) -> float:
        return _L + pw * t / x_max

    def y(v: float) -> float:
        return _T + ph * (1 - v / top)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
        f'font-family="sans-serif" font-size="11">',
        f'<text x="{_L}" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>',
    ]
    for k in range(6):
        v = top * k / 5
        out.append(
            f'<line x1="{_L}" x2="{_W - _R}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>'
            f'<text x="{_L - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g}</text>'
        )
    for k in range(11):
        t = x_max * k / 10
        out.append(f'<text x="{x(t):.1f}" y="{_H - _B + 16}" text-anchor="middle">{t:.0f}</text>')
    out.append(
        f'<text x="{_L + pw / 2}" y="{_H - 4}" text-anchor="middle">seconds</text>'
        f'<text x="12" y="{_T + ph / 2}" transform="rotate(-90 12 {_T + ph / 2})" '
        f'text-anchor="middle">{html.escape(unit)}</text>'
    )
    if warmup_s > 0:  # shade the warm-up: shown, but not in the report's figures
        out.append(
            f'<rect x="{_L}" y="{_T}" width="{x(min(warmup_s, x_max)) - _L:.1f}" height="{ph}"'
            ' fill="#f4f4f4"/>'
            f'<text x="{_L + 4}" y="{_T + 12}" fill="#888">warm-up</text>'
        )
    for n, (name, values) in enumerate(series.items()):
        pts = " ".join(
            f"{x(t):.1f},{y(v):.1f}" for t, v in zip(xs, values, strict=True) if v is not None
        )
        colour = _COLOURS.get(name, "#000")
        out.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{pts}"/>'
            f'<text x="{_W - _R - 90 * (len(series) - n)}" y="16" fill="{colour}">'
            f"— {html.escape(name)}</text>"
        )
    out.append("</svg>")
    return "\n".join(out)


def _columns(points: Sequence[Point]) -> tuple[list[int], dict[str, list[float | None]]]:
    xs = [p.t for p in points]
    cols: dict[str, list[float | None]] = {
        name: [getattr(p, name) for p in points]
        for name in ("sent", "accepted", "final", "p50", "p95", "p99")
    }
    return xs, cols


def render_html(report: Report) -> str:
    xs, cols = _columns(report.time_series)
    run, lat = report.run, report.latency
    summary = (
        f"{report.sent:,} sent, {report.accepted:,} accepted, {report.confirmed:,} "
        f"confirmed, {report.cancelled:,} cancelled, {report.failed:,} failed, "
        f"<b>{report.lost:,} lost</b>; {report.throughput.final_per_s:,.1f} final/s; "
        f"latency p50 {lat.p50:,.1f} / p95 {lat.p95:,.1f} / p99 {lat.p99:,.1f} / "
        f"max {lat.max:,.1f} ms"
    )
    if report.latency_by_outcome:
        summary += "<br>p50 / p99 by final status: " + ", ".join(
            f"{name} {o.p50:,.1f} / {o.p99:,.1f} ms"
            for name, o in report.latency_by_outcome.items()
        )
    rates = _panel(
        "orders per second",
        "orders/s",
        xs,
        {k: cols[k] for k in ("sent", "accepted", "final")},
        run.warmup,
    )
    latency = _panel(
        "latency, due time to final status (orders that went final that second)",
        "ms",
        xs,
        {k: cols[k] for k in ("p50", "p95", "p99")},
        run.warmup,
    )
    title = html.escape(f"jetsaga load {run.run_id}: {run.load_shape()}")
    return (
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>'
        f'<body style="font-family:sans-serif"><h2>{title}</h2>'
        f"<p>{html.escape(run.url)}, started {html.escape(run.started_at)}</p>"
        f"<p>{summary}</p>\n{rates}\n{latency}\n</body></html>\n"
    )


def write_png(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs, cols = _columns(report.time_series)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for name in ("sent", "accepted", "final"):
        top.plot(xs, cols[name], label=name, color=_COLOURS[name])
    for name in ("p50", "p95", "p99"):
        bottom.plot(
            xs, [math.nan if v is None else v for v in cols[name]], label=name, color=_COLOURS[name]
        )
    top.set_ylabel("orders/s")
    bottom.set_ylabel("latency, ms")
    bottom.set_xlabel("seconds")
    if report.run.warmup > 0:
        for ax in (top, bottom):
            ax.axvspan(0, report.run.warmup, color="#f4f4f4", label="warm-up")
    top.legend()
    bottom.legend()
    fig.suptitle(f"jetsaga load {report.run.run_id}: {report.run.load_shape()}")
    fig.savefig(path)
    plt.close(fig)


def write_chart(report: Report, path: Path) -> None:
    if path.suffix.lower() == ".png":
        if importlib.util.find_spec("matplotlib") is None:
            raise ChartError(f"{path}: a .png chart needs matplotlib; ask for a .html file")
        write_png(report, path)
        return
    path.write_text(render_html(report), encoding="utf-8")
