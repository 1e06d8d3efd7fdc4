"""Draw the pages' plots as inline SVG: the bucket timeline, the durations per bucket, the dependency graph.

The plots are drawn on the server, so the pages need no plotting library and work without a
network connection to any other site. Every text that comes from data is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime

from markupsafe import Markup, escape

from b2cal.reports import TIMELINE_STATES, BucketDurations, Timeline

STATE_COLOURS = {
    "queued": "#cbd5e1",
    "running": "#2563eb",
    "waiting_for_expert": "#f59e0b",
    "done": "#16a34a",
    "failed": "#dc2626",
    "cancelled": "#64748b",
}
STATE_LABELS = {
    "queued": "queued",
    "running": "running",
    "waiting_for_expert": "waiting for the expert",
    "done": "done",
    "failed": "failed",
    "cancelled": "cancelled",
}
#: The outline of the duration bars of a request that ended without a merge.
ENDED_OUTLINE = 'stroke="#1f2937" stroke-width="1" stroke-dasharray="3 2"'
PHASE_COLOURS = {"raw": "#dbeafe", "cdst": "#fef3c7"}
CRITICAL_COLOUR = "#b91c1c"
#: The slope of the request ids under the duration bars, in degrees below the horizontal.
LABEL_ANGLE = 35.0
#: The estimated width in px of one character of a 10 px label, 0.65 em. The server cannot measure
#: text, so the chart's margins are sized with it. In DejaVu Sans, a wide sans-serif font, a digit is
#: 0.64 em and ``prompt-e0026-r00000`` averages 0.59 em, but an id full of ``m`` or ``w`` is wider.
LABEL_CHAR_WIDTH = 6.5
#: The estimated width in px of one character of an 11 px legend label, scaled from
#: :data:`LABEL_CHAR_WIDTH`.
LEGEND_CHAR_WIDTH = LABEL_CHAR_WIDTH * 1.1


def _fmt(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def duration(seconds: float) -> str:
    """Format a number of seconds for people: ``45 s``, ``12 min``, ``3.5 h`` or ``2.1 d``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _ticks(start: datetime, seconds: float, count: int = 6) -> list[tuple[float, str]]:
    if seconds <= 0:
        return [(0.0, "0")]
    steps = [60, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400]
    step = next((item for item in steps if seconds / item <= count), steps[-1])
    ticks = []
    offset = 0.0
    while offset <= seconds + 1e-9:
        ticks.append((offset / seconds, duration(offset) if offset else "0"))
        offset += step
    return ticks


def legend(x: float, y: float) -> str:
    """Return the SVG legend of the timeline states, each entry as wide as its label."""
    parts = []
    left = x
    for state in TIMELINE_STATES:
        label = STATE_LABELS[state]
        parts.append(
            f'<rect x="{left:.1f}" y="{y}" width="12" height="12" fill="{STATE_COLOURS[state]}"/>'
            f'<text x="{left + 16:.1f}" y="{y + 10}" font-size="11">{label}</text>'
        )
        left += 16 + len(label) * LEGEND_CHAR_WIDTH + 14
    parts.append(
        f'<line x1="{left:.1f}" y1="{y + 6}" x2="{left + 20:.1f}" y2="{y + 6}" stroke="{CRITICAL_COLOUR}" '
        f'stroke-width="3"/><text x="{left + 26:.1f}" y="{y + 10}" font-size="11">critical path</text>'
    )
    return "".join(parts)


def timeline_svg(timeline: Timeline, width: int = 960) -> Markup:
    """Draw one bar per calibration, coloured by state over time, with the critical path marked."""
    label_width, row_height, top = 230, 20, 34
    plot_width = width - label_width - 20
    height = top + row_height * len(timeline.rows) + 40
    total = timeline.seconds or 1.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart timeline" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-label="Timeline of the bucket">',
        legend(label_width, 4),
    ]
    for fraction, text in _ticks(timeline.start, timeline.seconds):
        x = label_width + fraction * plot_width
        parts.append(
            f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{height - 30}" stroke="#e5e7eb"/>'
            f'<text x="{x:.1f}" y="{height - 16}" font-size="10" text-anchor="middle">{text}</text>'
        )
    for index, row in enumerate(timeline.rows):
        y = top + index * row_height
        weight = "bold" if row.critical else "normal"
        colour = CRITICAL_COLOUR if row.critical else "#1f2937"
        parts.append(
            f'<g class="timeline-row" data-calibration="{escape(row.calibration)}" data-state="{row.state}"'
            f' data-critical="{str(row.critical).lower()}">'
            f'<text x="{label_width - 6}" y="{y + 13}" font-size="11" text-anchor="end" '
            f'font-weight="{weight}" fill="{colour}">{escape(row.calibration)}</text>'
        )
        for segment in row.segments:
            x = label_width + (segment.start - timeline.start).total_seconds() / total * plot_width
            w = max(segment.seconds / total * plot_width, 1.0)
            parts.append(
                f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{row_height - 6}" '
                f'fill="{STATE_COLOURS[segment.state]}"><title>{escape(row.calibration)}: '
                f"{STATE_LABELS[segment.state]} for {duration(segment.seconds)}</title></rect>"
            )
        if row.critical:
            parts.append(
                f'<rect x="{label_width - 2}" y="{y + 1}" width="{plot_width + 4}" height="{row_height - 2}" '
                f'fill="none" stroke="{CRITICAL_COLOUR}" stroke-width="1.5" rx="3"/>'
            )
        parts.append("</g>")
    parts.append("</svg>")
    return Markup("".join(parts))


def label_extent(text: str) -> tuple[float, float]:
    """Return the estimated width and depth, in px, of a request id drawn at :data:`LABEL_ANGLE`."""
    length = len(text) * LABEL_CHAR_WIDTH
    angle = math.radians(LABEL_ANGLE)
    return length * math.cos(angle), length * math.sin(angle)


def durations_svg(rows: Sequence[BucketDurations], width: int = 960) -> Markup:
    """Draw, per bucket, the time for the bucket and the time from data taken to calibrated, in days.

    Each request id slopes down to the left from under its bars and ends there. The left margin is
    as wide as the longest id reaches, so that the first id is not cut off, and the bottom margin as
    deep.
    """
    reach, depth = label_extent(max((row.request_uid for row in rows), key=len, default=""))
    top, plot_height = 30, 200
    left = max(50, math.ceil(reach) + 8)
    bottom = max(70, math.ceil(depth) + 30)
    height = top + plot_height + bottom
    values = [row.bucket_days for row in rows] + [row.data_to_calibrated_days or 0.0 for row in rows]
    highest = max([*values, 1.0])
    scale = plot_height / highest
    group = (width - left - 10) / max(len(rows), 1)
    bar = min(24.0, group / 2.6)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart durations" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-label="Days per bucket">',
        '<rect x="50" y="6" width="12" height="12" fill="#2563eb"/>'
        '<text x="66" y="16" font-size="11">time for the bucket (days)</text>'
        '<rect x="250" y="6" width="12" height="12" fill="#f59e0b"/>'
        '<text x="266" y="16" font-size="11">data taken to calibrated (days)</text>'
        '<text x="470" y="16" font-size="11">pale: counted to now; dashed: ended without a merge</text>',
    ]
    step = max(1.0, round(highest / 5))
    tick = 0.0
    while tick <= highest + 1e-9:
        y = top + plot_height - tick * scale
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" stroke="#e5e7eb"/>'
            f'<text x="{left - 6}" y="{y + 3:.1f}" font-size="10" text-anchor="end">{_fmt(tick)}</text>'
        )
        tick += step
    for index, row in enumerate(rows):
        x = left + index * group + (group - 2 * bar) / 2
        opacity = "1" if row.stopped else "0.45"
        ended = f" ({escape(row.end_state)})" if row.end_state else ""
        outline = f" {ENDED_OUTLINE}" if row.end_state else ""
        for offset, value, colour in (
            (0.0, row.bucket_days, "#2563eb"),
            (bar, row.data_to_calibrated_days, "#f59e0b"),
        ):
            if value is None:
                continue
            h = max(value * scale, 1.0)
            parts.append(
                f'<rect class="duration-bar" x="{x + offset:.1f}" y="{top + plot_height - h:.1f}" '
                f'width="{bar:.1f}" '
                f'height="{h:.1f}" fill="{colour}" fill-opacity="{opacity}"{outline}>'
                f"<title>{escape(row.request_uid)}: {_fmt(value)} days{ended}</title></rect>"
            )
        cx = x + bar
        cy = top + plot_height + 12
        parts.append(
            f'<text class="duration-label" x="{cx:.1f}" y="{cy}" font-size="10" text-anchor="end" '
            f'transform="rotate({-LABEL_ANGLE:g} {cx:.1f} {cy})">{escape(row.request_uid)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def graph_svg(
    levels: Sequence[Sequence[str]],
    depends_on: Mapping[str, Sequence[str]],
    phases: Mapping[str, str],
    highlight: Sequence[str] = (),
    width: int = 1100,
) -> Markup:
    """Draw the dependency graph: one column per level, an arrow from each dependency to its dependent."""
    node_width, node_height, gap = 170, 24, 10
    columns = max(len(levels), 1)
    column_step = max((width - node_width - 20) / max(columns - 1, 1), node_width + 30)
    tallest = max((len(level) for level in levels), default=1)
    height = 40 + tallest * (node_height + gap)
    width = int(20 + (columns - 1) * column_step + node_width + 10)
    where: dict[str, tuple[float, float]] = {}
    for column, level in enumerate(levels):
        for row, name in enumerate(level):
            where[name] = (10 + column * column_step, 30 + row * (node_height + gap))
    chain = list(highlight)
    chain_edges = set(zip(chain, chain[1:], strict=False))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart graph" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-label="Dependency graph">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerUnits="userSpaceOnUse" '
        'markerWidth="8" markerHeight="8" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#64748b"/></marker></defs>',
    ]
    for column in range(columns):
        parts.append(
            f'<text x="{10 + column * column_step:.1f}" y="16" font-size="11" fill="#64748b">'
            f"level {column}</text>"
        )
    for name, (x, y) in where.items():
        for dep in depends_on.get(name, ()):
            if dep not in where:
                continue
            dx, dy = where[dep]
            x1, y1, x2, y2 = dx + node_width, dy + node_height / 2, x, y + node_height / 2
            mid = (x1 + x2) / 2
            on_chain = (dep, name) in chain_edges
            stroke = CRITICAL_COLOUR if on_chain else "#94a3b8"
            parts.append(
                f'<path class="edge" data-from="{escape(dep)}" data-to="{escape(name)}" '
                f'd="M {x1:.1f} {y1:.1f} C {mid:.1f} {y1:.1f}, {mid:.1f} {y2:.1f}, {x2:.1f} {y2:.1f}" '
                f'fill="none" stroke="{stroke}" stroke-width="{2.5 if on_chain else 1}" '
                'marker-end="url(#arrow)"/>'
            )
    on_path = set(chain)
    for name, (x, y) in where.items():
        stroke = CRITICAL_COLOUR if name in on_path else "#64748b"
        parts.append(
            f'<g class="node" data-name="{escape(name)}"><rect x="{x:.1f}" y="{y:.1f}" width="{node_width}" '
            f'height="{node_height}" rx="4" fill="{PHASE_COLOURS.get(phases.get(name, ""), "#f1f5f9")}" '
            f'stroke="{stroke}" stroke-width="{2 if name in on_path else 1}"/>'
            f'<text x="{x + 6:.1f}" y="{y + 16:.1f}" font-size="11">{escape(name[:26])}</text>'
            f"<title>{escape(name)} ({escape(phases.get(name, ''))} phase)</title></g>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def days(value: float | None) -> str:
    """Format a number of days for a table cell."""
    return "" if value is None else f"{value:.1f}"
