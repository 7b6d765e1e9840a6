"""Quality against strong-call share, as a small hand-written SVG (no plotting library to pin).

One panel per evaluation: each router's curve, the weak and strong models' quality as dashed
lines, and 95 % of the strong model's quality, the line calls@95 is read at.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from routing.learned.evaluate import Evaluation

_COLOURS = {"learned": "#1f77b4", "length": "#2ca02c", "random": "#7f7f7f", "oracle": "#d62728"}
_W, _H, _PAD = 360, 260, 44           # one panel, and the margin for its axes


def svg(evaluations: Sequence[Evaluation], title: str = "Quality vs strong-call share") -> str:
    cols = min(len(evaluations), 3) or 1
    rows = (len(evaluations) + cols - 1) // cols
    width, height = cols * _W, rows * _H + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="8" y="18" font-size="14">{escape(title)}</text>']
    for i, ev in enumerate(evaluations):
        parts.append(_panel(ev, (i % cols) * _W, 30 + (i // cols) * _H))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _panel(ev: Evaluation, x0: int, y0: int) -> str:
    curves = [p for r in ev.reports for p in r.curve]
    low = min([ev.weak_quality] + [q for _, q in curves]) - 0.01
    high = max([ev.strong_quality] + [q for _, q in curves]) + 0.01
    pw, ph = _W - _PAD - 12, _H - _PAD - 24

    def at(share: float, quality: float) -> tuple[float, float]:
        return (x0 + _PAD + share * pw, y0 + 20 + (high - quality) / (high - low) * ph)

    label = ev.dataset if ev.split != "cross" else f"train {ev.train} → test {ev.dataset}"
    out = [f'<text x="{x0 + _PAD}" y="{y0 + 12}">{escape(label)} ({ev.split}, '
           f'{ev.examples} prompts)</text>',
           f'<rect x="{x0 + _PAD}" y="{y0 + 20}" width="{pw}" height="{ph}" fill="none" '
           f'stroke="#999"/>']
    for share in (0.0, 0.25, 0.5, 0.75, 1.0):
        x, y = at(share, low)
        out.append(f'<text x="{x:.1f}" y="{y + 14:.1f}" text-anchor="middle">{share:.0%}</text>')
    for quality in (low + 0.01, (low + high) / 2, high - 0.01):
        x, y = at(0.0, quality)
        out.append(f'<text x="{x - 4:.1f}" y="{y + 4:.1f}" text-anchor="end">{quality:.2f}</text>')
    x, y = at(0.5, low)
    out.append(f'<text x="{x:.1f}" y="{y + 28:.1f}" text-anchor="middle">strong-call share</text>')
    for quality, colour, name in ((ev.weak_quality, "#999", "weak"),
                                  (ev.strong_quality, "#000", "strong"),
                                  (0.95 * ev.strong_quality, "#bbb", "95 % strong")):
        (xa, ya), (xb, _) = at(0, quality), at(1, quality)
        out.append(f'<line x1="{xa:.1f}" y1="{ya:.1f}" x2="{xb:.1f}" y2="{ya:.1f}" '
                   f'stroke="{colour}" stroke-dasharray="4 3"/>'
                   f'<text x="{xb - 2:.1f}" y="{ya - 3:.1f}" text-anchor="end" '
                   f'fill="{colour}">{name}</text>')
    for n, r in enumerate(ev.reports):
        colour = _COLOURS.get(r.router, "#9467bd")
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in (at(s, q) for s, q in r.curve))
        out.append(f'<polyline points="{points}" fill="none" stroke="{colour}" '
                   f'stroke-width="1.8"/>')
        lx, ly = x0 + _PAD + pw - 120, y0 + 20 + ph - 26 - 13 * n
        out.append(f'<text x="{lx:.1f}" y="{ly:.1f}" fill="{colour}">{escape(r.router)} '
                   f'APGR {r.apgr:.3f}</text>')
    return "\n".join(out)
