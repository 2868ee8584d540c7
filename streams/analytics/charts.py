"""Tiny JS-free SVG charts for the HTML report: stacked bars over time and grouped bars."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")
WIDTH, HEIGHT, PAD_L, PAD_B, PAD_T = 760, 280, 70, 50, 20


def _axis(max_value: float, unit: str) -> list[str]:
    parts = []
    plot_h = HEIGHT - PAD_B - PAD_T
    for i in range(5):
        value = max_value * i / 4
        y = HEIGHT - PAD_B - plot_h * i / 4
        parts.append(f'<line x1="{PAD_L}" y1="{y:.1f}" x2="{WIDTH - 10}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(
            f'<text x="{PAD_L - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{escape(_fmt(value, unit))}</text>'
        )
    return parts


def _fmt(value: float, unit: str) -> str:
    if unit == "$":
        return f"${value:,.4f}" if value < 1 else f"${value:,.2f}"
    return f"{value:,.0f}{unit}"


def _legend(series: Sequence[str]) -> list[str]:
    parts = []
    for i, name in enumerate(series):
        x = PAD_L + i * 120
        parts.append(f'<rect x="{x}" y="{HEIGHT - 16}" width="10" height="10" fill="{PALETTE[i % len(PALETTE)]}"/>')
        parts.append(f'<text x="{x + 14}" y="{HEIGHT - 7}" font-size="11">{escape(name)}</text>')
    return parts


def stacked_bars(title: str, labels: Sequence[str], series: Mapping[str, Sequence[float]], unit: str = "$") -> str:
    """Bars per label (e.g. a time bucket), stacked by series (e.g. provider)."""
    totals = [sum(values[i] for values in series.values()) for i in range(len(labels))]
    top = max(totals, default=0.0) or 1.0
    plot_w, plot_h = WIDTH - PAD_L - 10, HEIGHT - PAD_B - PAD_T
    step = plot_w / max(len(labels), 1)
    bar_w = max(step * 0.8, 1.0)
    parts = _axis(top, unit)
    for i, label in enumerate(labels):
        x = PAD_L + i * step + (step - bar_w) / 2
        y = float(HEIGHT - PAD_B)
        for j, (name, values) in enumerate(series.items()):
            h = plot_h * values[i] / top
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                f'fill="{PALETTE[j % len(PALETTE)]}"><title>{escape(label)} {escape(name)}: '
                f"{escape(_fmt(values[i], unit))}</title></rect>"
            )
        if len(labels) <= 16 or i % max(len(labels) // 8, 1) == 0:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{HEIGHT - PAD_B + 14}" font-size="10" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
    parts.extend(_legend(list(series)))
    return _svg(title, parts)


def grouped_bars(title: str, groups: Sequence[str], series: Mapping[str, Sequence[float]], unit: str = " ms") -> str:
    """For each group (e.g. provider), one bar per series (e.g. p50, p95, p99)."""
    top = max((v for values in series.values() for v in values), default=0.0) or 1.0
    plot_w, plot_h = WIDTH - PAD_L - 10, HEIGHT - PAD_B - PAD_T
    step = plot_w / max(len(groups), 1)
    bar_w = step * 0.8 / max(len(series), 1)
    parts = _axis(top, unit)
    for i, group in enumerate(groups):
        x0 = PAD_L + i * step + step * 0.1
        for j, (name, values) in enumerate(series.items()):
            h = plot_h * values[i] / top
            x = x0 + j * bar_w
            parts.append(
                f'<rect x="{x:.1f}" y="{HEIGHT - PAD_B - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                f'fill="{PALETTE[j % len(PALETTE)]}"><title>{escape(group)} {escape(name)}: '
                f"{escape(_fmt(values[i], unit))}</title></rect>"
            )
        parts.append(
            f'<text x="{x0 + step * 0.4:.1f}" y="{HEIGHT - PAD_B + 14}" font-size="11" '
            f'text-anchor="middle">{escape(group)}</text>'
        )
    parts.extend(_legend(list(series)))
    return _svg(title, parts)


def _svg(title: str, parts: list[str]) -> str:
    body = "\n".join(parts)
    return (
        f"<figure><figcaption>{escape(title)}</figcaption>"
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">\n{body}\n</svg></figure>'
    )
