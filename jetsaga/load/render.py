"""The human-readable report printed at the end of a run."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from jetsaga.load.report import Latency, Report


def _latency_row(table: Table, name: str, lat: Latency) -> None:
    table.add_row(
        name,
        f"{lat.p50:,.1f}",
        f"{lat.p95:,.1f}",
        f"{lat.p99:,.1f}",
        f"{lat.max:,.1f}",
        f"{lat.count:,}",
    )


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in counts.items()) or "none"


def render(report: Report, console: Console) -> None:
    run = report.run
    verdict = "[green]PASS[/]" if report.exit_code == 0 else "[bold red]FAIL[/]"
    console.print(
        f"[bold]jetsaga load[/] run {run.run_id}: {run.load_shape()} "
        f"against {run.url} (final statuses via {run.status_source})  {verdict}"
    )
    for note in run.notes:
        console.print(f"  [yellow]note:[/] {note}")
    t = report.throughput
    lines = [
        ("sent", f"{report.sent:,}" + _warmup_share(report)),
        (
            "accepted",
            f"{report.accepted:,}"
            + (
                f" ({report.accepted_after_error:,} after an ambiguous answer)"
                if report.accepted_after_error
                else ""
            ),
        ),
        ("rejected by HTTP status", _counts(report.rejected)),
        ("transport errors", _counts(report.transport_errors)),
        (
            "CONFIRMED / CANCELLED / FAILED",
            f"{report.confirmed:,} / {report.cancelled:,} / {report.failed:,}",
        ),
        ("lost (accepted, not final)", f"[bold red]{report.lost:,}[/]" if report.lost else "0"),
        (
            "throughput",
            f"{t.final_per_s:,.1f} final/s in the {t.window_s:g} s window "
            f"({t.final_per_s_overall:,.1f}/s overall), {t.accepted_per_s:,.1f} accepted/s",
        ),
        ("finals seen via", _counts(report.finals_seen_via)),
    ]
    if report.unexpected_outcomes:
        lines.append(("unexpected outcomes", _counts(report.unexpected_outcomes)))
    if report.final_not_accepted:
        lines.append(("final but not accepted", f"{report.final_not_accepted:,}"))
    s = report.sender
    lines.append(
        (
            "sender",
            f"max {s.max_in_flight:,} in flight over {s.connections} "
            f"connections, late by p99 {s.lag_p99_ms:.1f} ms / max {s.lag_max_ms:.1f} ms"
            + (
                f", [red]in-flight cap {s.in_flight_cap:,} hit {s.cap_hits:,} times[/]"
                if s.cap_hits
                else ""
            ),
        )
    )
    lines.append(("stock conservation", _stock(report)))
    for name, value in lines:
        console.print(f"  {name:<31} {value}")
    table = Table(title="latency, ms", title_justify="left")
    for col in ("", "p50", "p95", "p99", "max", "count"):
        table.add_column(col, justify="right" if col else "left")
    _latency_row(table, "due time -> final", report.latency)
    for outcome, latency in report.latency_by_outcome.items():
        _latency_row(table, f"  of which {outcome}", latency)
    _latency_row(table, "actual send -> final", report.latency_from_send)
    _latency_row(table, "POST answer", report.post_latency)
    console.print(table)
    if report.lost_order_ids:
        console.print("  lost, first few: " + " ".join(report.lost_order_ids))


def _warmup_share(report: Report) -> str:
    if not report.warmup_orders:
        return ""
    return (
        f" ({report.warmup_orders:,} in the warm-up: counted here and for loss and stock,"
        " not in throughput or latency)"
    )


def _stock(report: Report) -> str:
    st = report.stock
    if not st.checked:
        return f"[yellow]not checked[/]: {st.note}"
    if st.ok:
        extra = "" if st.sold_expected is None else f", reserved 0, sold {st.sold:,} = confirmed"
        if st.waited_s >= 0.5:
            extra += f"; right {st.waited_s:.1f} s after the last final status"
        return f"[green]ok[/] over {st.products} products (total {st.set_total:,} kept{extra})"
    shown = "; ".join(st.violations[:5])
    more = f" (+{len(st.violations) - 5} more)" if len(st.violations) > 5 else ""
    return f"[bold red]VIOLATED[/]: {shown}{more}"
