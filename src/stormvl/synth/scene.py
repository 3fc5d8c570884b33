"""A tiny 2-D renderer: filled shapes drawn into uint8 RGB frames with numpy masks.

Every primitive works on the bounding box of the shape only (a slice of the frame), so a
16-frame clip of a dozen objects renders in a few milliseconds. Coordinates are pixels as
floats (x to the right, y down); the families work in unit coordinates and scale by the
canvas size. ``alpha < 1`` blends, which is how thought videos make occluders see-through.
"""

from __future__ import annotations

import numpy as np

BACKGROUND = (28, 30, 36)
GREY = (128, 128, 128)
CUP = (176, 128, 72)
WHITE = (235, 235, 235)

# Named colours used for objects; names appear in questions and options.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (228, 48, 48),
    "green": (60, 200, 70),
    "blue": (60, 100, 240),
    "yellow": (240, 220, 40),
    "purple": (160, 70, 210),
    "orange": (250, 140, 20),
    "cyan": (40, 220, 220),
    "pink": (250, 130, 200),
}
COLOR_NAMES = tuple(PALETTE)


def blank(frames: int, size: int, color: tuple[int, int, int] = BACKGROUND) -> np.ndarray:
    """(T, S, S, 3) uint8 frames filled with the background colour."""
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    # fill one pixel, then copy rows and frames: ~40x faster than a broadcast assignment
    out[0, 0, :] = color
    out[0, 1:] = out[0, 0]
    out[1:] = out[0]
    return out


def _box(img: np.ndarray, x0: float, y0: float, x1: float, y1: float):
    """Clip a float box to the image; returns integer slice bounds or None when empty."""
    h, w = img.shape[:2]
    i0, i1 = max(0, int(np.floor(y0))), min(h, int(np.ceil(y1)) + 1)
    j0, j1 = max(0, int(np.floor(x0))), min(w, int(np.ceil(x1)) + 1)
    if i0 >= i1 or j0 >= j1:
        return None
    return i0, i1, j0, j1


def _paint(img: np.ndarray, sl, mask: np.ndarray, color, alpha: float) -> None:
    i0, i1, j0, j1 = sl
    region = img[i0:i1, j0:j1]
    if alpha >= 1.0:
        region[mask] = color
    else:
        src = region[mask].astype(np.float32)
        region[mask] = (src * (1 - alpha) + np.asarray(color, np.float32) * alpha + 0.5).astype(
            np.uint8
        )


def _grid(sl):
    i0, i1, j0, j1 = sl
    # pixel centres, (h, 1) and (1, w)
    return np.arange(i0, i1)[:, None] + 0.5, np.arange(j0, j1)[None, :] + 0.5


def circle(img, cx, cy, r, color, alpha=1.0) -> None:
    """Filled disc of radius ``r`` centred at (cx, cy)."""
    sl = _box(img, cx - r, cy - r, cx + r, cy + r)
    if sl is None:
        return
    yy, xx = _grid(sl)
    _paint(img, sl, (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r, color, alpha)


def ring(img, cx, cy, r, color, width=1.5, alpha=1.0) -> None:
    """Circle outline (used for 'removed' objects in counterfactual thoughts)."""
    sl = _box(img, cx - r, cy - r, cx + r, cy + r)
    if sl is None:
        return
    yy, xx = _grid(sl)
    d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    _paint(img, sl, (d <= r) & (d >= r - width), color, alpha)


def arc(img, cx, cy, radius, start, sweep, color, width=1.5, alpha=1.0) -> None:
    """Arc of a circle from angle ``start`` over signed ``sweep`` radians (y down, so a
    positive sweep runs clockwise on screen); |sweep| >= 2 pi draws the whole circle."""
    r = radius + width
    sl = _box(img, cx - r, cy - r, cx + r, cy + r)
    if sl is None or sweep == 0:
        return
    yy, xx = _grid(sl)
    d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    rel = np.mod((np.arctan2(yy - cy, xx - cx) - start) * np.sign(sweep), 2 * np.pi)
    mask = (np.abs(d - radius) <= width / 2) & (rel <= abs(sweep))
    _paint(img, sl, mask, color, alpha)


def rect(img, x0, y0, x1, y1, color, alpha=1.0) -> None:
    """Filled axis-aligned rectangle [x0, x1) x [y0, y1)."""
    sl = _box(img, x0, y0, x1, y1)
    if sl is None:
        return
    yy, xx = _grid(sl)
    _paint(img, sl, (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1), color, alpha)


def frame_rect(img, x0, y0, x1, y1, color, width=1.0, alpha=1.0) -> None:
    """Rectangle outline (a transparent occluder, the map viewport)."""
    for a, b, c, d in ((x0, y0, x1, y0 + width), (x0, y1 - width, x1, y1),
                       (x0, y0, x0 + width, y1), (x1 - width, y0, x1, y1)):
        rect(img, a, b, c, d, color, alpha)


def square(img, cx, cy, half, color, alpha=1.0) -> None:
    rect(img, cx - half, cy - half, cx + half, cy + half, color, alpha)


def diamond(img, cx, cy, r, color, alpha=1.0) -> None:
    sl = _box(img, cx - r, cy - r, cx + r, cy + r)
    if sl is None:
        return
    yy, xx = _grid(sl)
    _paint(img, sl, np.abs(xx - cx) + np.abs(yy - cy) <= r, color, alpha)


def triangle(img, cx, cy, r, color, alpha=1.0) -> None:
    """Upward isosceles triangle inside the box of half-size ``r``."""
    sl = _box(img, cx - r, cy - r, cx + r, cy + r)
    if sl is None:
        return
    yy, xx = _grid(sl)
    frac = (yy - (cy - r)) / (2 * r)  # 0 at the apex, 1 at the base
    _paint(img, sl, (frac >= 0) & (frac <= 1) & (np.abs(xx - cx) <= r * frac), color, alpha)


def cup(img, cx, cy, half_w, height, color=CUP, alpha=1.0) -> None:
    """An upside-down cup: a trapezoid, narrow at the top (cy - height/2), wide at the base."""
    top, bottom = cy - height / 2, cy + height / 2
    sl = _box(img, cx - half_w, top, cx + half_w, bottom)
    if sl is None:
        return
    yy, xx = _grid(sl)
    frac = np.clip((yy - top) / height, 0, 1)
    half = half_w * (0.6 + 0.4 * frac)
    _paint(img, sl, (yy >= top) & (yy < bottom) & (np.abs(xx - cx) <= half), color, alpha)


def segment(img, x0, y0, x1, y1, color, width=1.5, alpha=1.0) -> None:
    """Thick line segment (trails and predicted paths): distance-to-segment mask."""
    pad = width
    sl = _box(img, min(x0, x1) - pad, min(y0, y1) - pad, max(x0, x1) + pad, max(y0, y1) + pad)
    if sl is None:
        return
    yy, xx = _grid(sl)
    dx, dy = x1 - x0, y1 - y0
    n2 = dx * dx + dy * dy
    t = np.zeros_like(xx * yy) if n2 == 0 else np.clip(((xx - x0) * dx + (yy - y0) * dy) / n2, 0, 1)
    px, py = x0 + t * dx, y0 + t * dy
    _paint(img, sl, (xx - px) ** 2 + (yy - py) ** 2 <= (width / 2) ** 2, color, alpha)


def polyline(img, pts, color, width=1.5, alpha=1.0) -> None:
    """Connected segments through ``pts`` ((N, 2) x, y)."""
    for (ax, ay), (bx, by) in zip(pts[:-1], pts[1:], strict=False):
        segment(img, ax, ay, bx, by, color, width, alpha)


def tally(img, count, x0, y0, color=WHITE, unit=3.0) -> None:
    """``count`` tally marks (groups of five, the fifth drawn across) from (x0, y0)."""
    h = unit * 3
    x = x0
    for i in range(count):
        if i % 5 == 4:
            segment(img, x - 4 * unit - 0.5 * unit, y0 + h, x - 0.5 * unit, y0, color, 1.2)
            x += unit
        else:
            rect(img, x, y0, x + max(1.0, unit / 3), y0 + h, color)
            x += unit


SHAPES = {"circle": circle, "square": square, "diamond": diamond, "triangle": triangle}


def shape(img, kind, cx, cy, r, color, alpha=1.0) -> None:
    """Draw one of ``SHAPES`` by name; ``r`` is the half-size."""
    SHAPES[kind](img, cx, cy, r, color, alpha)
