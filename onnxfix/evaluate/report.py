"""Presenting evaluation results: the stdout table, the per-image CSV, and the PNG bar chart (PIL only)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from onnxfix.evaluate.metrics import METRICS
from onnxfix.evaluate.runner import value_names, write_text_atomic

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _fmt(v: Any) -> str:
    return "—" if v is None else f"{v:.3f}"


def better(value: str) -> str:
    """"↓" for values where lower is better, else "↑"."""
    low = {v for spec in METRICS.values() for v in spec.lower_is_better}
    return "↓" if value in low else "↑"


def table(summary: dict[str, dict[str, Any]], metrics: Sequence[str]) -> str:
    """A markdown table: one row per metric value, one column per method (means), then images and seconds."""
    methods = list(summary)
    head = "| metric | " + " | ".join(methods) + " |"
    sep = "|---|" + "---:|" * len(methods)
    lines = [head, sep]
    for n in value_names(metrics):
        lines.append(f"| {n} {better(n)} | " + " | ".join(_fmt(summary[m]["mean"].get(n)) for m in methods) + " |")
    lines.append("| images | " + " | ".join(str(summary[m]["images"]) for m in methods) + " |")
    lines.append("| errors | " + " | ".join(str(summary[m]["errors"]) for m in methods) + " |")
    lines.append("| seconds | " + " | ".join(f"{summary[m]['seconds']:.1f}" for m in methods) + " |")
    return "\n".join(lines)


def write_csv(rows: Sequence[dict], metrics: Sequence[str], path: Path, protect: Iterable[str | Path] = ()) -> None:
    """Per-image rows flattened to CSV (one column per value), written atomically."""
    names = value_names(metrics)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "method", "image", "label", "predicted", "seconds", "error", *names])
    for r in rows:
        vals = r.get("values") or {}
        w.writerow([r.get("model"), r.get("method"), r.get("image"), r.get("label"), r.get("predicted"),
                    r.get("seconds"), r.get("error") or "",
                    *["" if vals.get(n) is None else f"{vals[n]:.6g}" for n in names]])
    write_text_atomic(path, buf.getvalue(), protect=protect)


def chart(summary: dict[str, dict[str, Any]], metrics: Sequence[str], title: str = "") -> Image.Image:
    """One small bar panel per metric value (its own scale, 0 at the bottom), one coloured bar per method."""
    methods = list(summary)
    names = [n for n in value_names(metrics) if any(summary[m]["mean"].get(n) is not None for m in methods)]
    font = ImageFont.load_default()
    pw, ph, cols = max(200, 24 + 30 * len(methods)), 150, 4
    rows_n = max(1, -(-len(names) // cols))
    legend_h = 18 * ((len(methods) + 3) // 4) + 8
    top = 24 if title else 4
    W, H = cols * pw, top + legend_h + rows_n * ph
    im = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(im)
    if title:
        d.text((8, 6), title, fill="black", font=font)
    for i, m in enumerate(methods):
        x, y = 8 + (i % 4) * (W // 4), top + 4 + 18 * (i // 4)
        d.rectangle([x, y, x + 12, y + 12], fill=PALETTE[i % len(PALETTE)])
        d.text((x + 18, y), m, fill="black", font=font)
    for k, n in enumerate(names):
        ox, oy = (k % cols) * pw, top + legend_h + (k // cols) * ph
        d.text((ox + 8, oy + 4), f"{n} ({'lower' if better(n) == '↓' else 'higher'} is better)", fill="black",
               font=font)
        vals = [summary[m]["mean"].get(n) for m in methods]
        hi = max([abs(v) for v in vals if v is not None] + [1e-9])
        scale = 1.0 if hi <= 1.0 else hi
        base_y, plot_h = oy + ph - 22, ph - 56
        bw = max(4, (pw - 20) // max(1, len(methods)) - 4)
        d.line([ox + 8, base_y, ox + pw - 8, base_y], fill=(120, 120, 120))
        for j, v in enumerate(vals):
            if v is None:
                continue
            bx = ox + 10 + j * (bw + 4)
            hpx = int(round(abs(v) / scale * plot_h))
            y0, y1 = (base_y - hpx, base_y) if v >= 0 else (base_y, base_y + min(hpx, 18))
            d.rectangle([bx, y0, bx + bw, y1], fill=PALETTE[j % len(PALETTE)])
            d.text((bx, min(y0, base_y) - 11), f"{v:.2f}", fill="black", font=font)
    return im
