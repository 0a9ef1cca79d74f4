"""A PNG of the loss and metric curves, drawn without matplotlib (a dependency-free rasteriser).

One panel per quantity (losses together, then each metric), white background, coloured lines,
tick marks for epochs. Enough to see at a glance whether training went well.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

from dslc.fileio import write_atomic

COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
W, H, PAD = 360, 220, 24

# 3x5 digits and a few letters for axis labels
GLYPHS = {
    "0": "111101101101111",
    "1": "010110010010111",
    "2": "111001111100111",
    "3": "111001111001111",
    "4": "101101111001001",
    "5": "111100111001111",
    "6": "111100111101111",
    "7": "111001001001001",
    "8": "111101111101111",
    "9": "111101111001111",
    ".": "000000000000010",
    "-": "000000111000000",
    "e": "000111111100111",
    " ": "000000000000000",
}


def _png(pixels: list[bytearray], width: int, height: int) -> bytes:
    raw = b"".join(b"\x00" + bytes(row) for row in pixels)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


class Canvas:
    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.rows = [bytearray([255] * width * 3) for _ in range(height)]

    def dot(self, x: int, y: int, color) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            self.rows[y][3 * x : 3 * x + 3] = bytes(color)

    def line(self, x0: float, y0: float, x1: float, y1: float, color, thick: int = 1) -> None:
        steps = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        for i in range(steps + 1):
            t = i / steps
            x, y = round(x0 + (x1 - x0) * t), round(y0 + (y1 - y0) * t)
            for dx in range(thick):
                for dy in range(thick):
                    self.dot(x + dx, y + dy, color)

    def text(self, x: int, y: int, s: str, color=(60, 60, 60)) -> None:
        for ch in s:
            glyph = GLYPHS.get(ch)
            if glyph:
                for i, bit in enumerate(glyph):
                    if bit == "1":
                        self.dot(x + i % 3, y + i // 3, color)
            x += 4


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


def plot(history: list[dict], path: Path) -> None:
    """Write `path`: panels of the per-epoch values in `history` (metrics.jsonl records)."""
    keys = (
        [k for k in history[0] if k not in ("epoch", "samples_per_s") and isinstance(history[0].get(k), (int, float))]
        if history
        else []
    )
    losses = [k for k in keys if "loss" in k]
    panels = ([losses] if losses else []) + [[k] for k in keys if k not in losses]
    if not panels:
        return
    cols = min(2, len(panels))
    rows = (len(panels) + cols - 1) // cols
    canvas = Canvas(W * cols, H * rows)
    for n, panel in enumerate(panels):
        ox, oy = (n % cols) * W, (n // cols) * H
        series = [
            [(r["epoch"], r[k]) for r in history if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
            for k in panel
        ]
        values = [v for s in series for _, v in s]
        if not values:
            continue
        lo, hi = min(values), max(values)
        if not hi - lo > 1e-12 * max(abs(hi), abs(lo), 1.0):  # flat (or overflowing) curve: give it some height
            lo, hi = lo - max(abs(lo), 1.0) * 0.01, hi + max(abs(hi), 1.0) * 0.01
        e0, e1 = history[0]["epoch"], max(history[-1]["epoch"], history[0]["epoch"] + 1)
        x0, x1, y0, y1 = ox + PAD + 8, ox + W - 8, oy + H - PAD, oy + 14

        def px(e, v, x0=x0, x1=x1, y0=y0, y1=y1, lo=lo, hi=hi, e0=e0, e1=e1):
            return x0 + (x1 - x0) * (e - e0) / (e1 - e0), y0 - (y0 - y1) * (v - lo) / (hi - lo)

        canvas.line(x0, y0, x1, y0, (0, 0, 0))
        canvas.line(x0, y0, x0, y1, (0, 0, 0))
        canvas.text(ox + 2, y1 - 2, _fmt(hi))
        canvas.text(ox + 2, y0 - 4, _fmt(lo))
        for e in range(e0, e1 + 1):
            x, _ = px(e, lo)
            canvas.line(x, y0, x, y0 + 3, (0, 0, 0))
        for i, s in enumerate(series):
            color = COLORS[(i + n) % len(COLORS)]
            canvas.line(x0 + 4 + 30 * i, oy + 5, x0 + 20 + 30 * i, oy + 5, color, 2)
            for (ea, va), (eb, vb) in zip(s, s[1:]):
                canvas.line(*px(ea, va), *px(eb, vb), color, 2)
            if len(s) == 1:
                x, y = px(*s[0])
                canvas.line(x - 1, y - 1, x + 1, y + 1, color, 2)
    write_atomic(path, _png(canvas.rows, canvas.width, canvas.height))
