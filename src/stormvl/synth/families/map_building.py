"""Map building: a camera pans over a larger world; where is landmark A relative to landmark B?

The viewport sweeps the world in a snake path from a random corner, so A and B are seen at
different times (at hard level never in the same frame) and their relation must be built
up across the pan. Thought video: the map being built - the whole world at canvas scale,
dark where nothing has been seen yet, with the current viewport outlined.
"""

from __future__ import annotations

import numpy as np

from stormvl.synth import scene
from stormvl.synth.base import Ctx, Episode, Family

QUADS = ["above and to the left of", "above and to the right of",
         "below and to the left of", "below and to the right of"]


def snake_path(world: float, view: float, T: int, rng) -> np.ndarray:
    """(T, 2) viewport top-left corners along a boustrophedon sweep from a random corner."""
    rows = max(2, int(np.ceil((world - view) / view)) + 1)
    span = world - view
    ys = np.linspace(0, span, rows)
    pts = []
    for i, y in enumerate(ys):
        xs = (0.0, span) if i % 2 == 0 else (span, 0.0)
        pts += [(xs[0], y), (xs[1], y)]
    pts = np.array(pts)
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    cum = np.concatenate([[0], np.cumsum(seg)])
    s = np.linspace(0, cum[-1], T)
    out = np.stack([np.interp(s, cum, pts[:, 0]), np.interp(s, cum, pts[:, 1])], 1)
    if rng.random() < 0.5:
        out = out[:, ::-1]  # sweep columns instead of rows
    if rng.random() < 0.5:
        out[:, 0] = span - out[:, 0]
    if rng.random() < 0.5:
        out[:, 1] = span - out[:, 1]
    return out


class MapBuilding(Family):
    name = "map_building"
    description = "Relate two landmarks seen at different times through a panning camera."
    probe = "answer quadrant once both landmarks have been seen, else 4 (unknown)"
    levels = {
        "easy": {"world": (1.8, 2.0), "landmarks": (3, 4)},
        "medium": {"world": (2.0, 2.3), "landmarks": (4, 5)},
        "hard": {"world": (2.3, 2.6), "landmarks": (5, 6)},
        "ood": {"world": (3.0, 3.4)},
    }

    def _layout(self, ctx: Ctx, W: float, n: int, answer: int, r: float):  # noqa: N803
        rng, S = ctx.rng, ctx.S
        lo, hi = 0.1 * S, W - 0.1 * S
        for _ in range(5000):
            b = rng.uniform(lo, hi, 2)
            a = rng.uniform(lo, hi, 2)
            dx, dy = a - b
            quad = (0 if dy < 0 else 2) + (0 if dx < 0 else 1)
            if quad != answer or min(abs(dx), abs(dy)) < 0.3 * S:
                continue
            if ctx.level == "hard" and max(abs(dx), abs(dy)) < S:
                continue  # never in one view
            pts = [a, b]
            while len(pts) < n:
                p = rng.uniform(lo, hi, 2)
                if min(np.linalg.norm(p - q) for q in pts) > 4 * r:
                    pts.append(p)
            return np.array(pts)
        raise RuntimeError("map_building: no layout found")  # pragma: no cover

    def make(self, ctx: Ctx) -> Episode:
        rng, T, S = ctx.rng, ctx.T, ctx.S
        W, n = ctx.float("world") * S, ctx.int("landmarks")  # noqa: N806
        answer = ctx.balanced(4)
        r = 0.07 * S
        pts = self._layout(ctx, W, n, answer, r)
        names = ctx.choice(scene.COLOR_NAMES, n)
        kinds = [ctx.choice(list(scene.SHAPES)) for _ in range(n)]
        cam = snake_path(W, S, T, rng)
        k = S / W  # world -> minimap scale
        seen_mask = np.zeros((S, S), bool)
        seen = [False] * n
        video, thought = scene.blank(T, S), scene.blank(T, S, (6, 6, 8))  # unseen = black
        minimap = scene.blank(1, S, (58, 62, 72))[0]  # seen ground is lighter
        for j in range(n):
            scene.shape(minimap, kinds[j], pts[j, 0] * k, pts[j, 1] * k, max(1.5, r * k), scene.PALETTE[names[j]])
        state = []
        for f in range(T):
            cx, cy = cam[f]
            for j in range(n):
                x, y = pts[j] - (cx, cy)
                scene.shape(video[f], kinds[j], x, y, r, scene.PALETTE[names[j]])
                if -r < x < S + r and -r < y < S + r:
                    seen[j] = True
            i0, j0 = int(cy * k), int(cx * k)
            seen_mask[i0 : int(np.ceil((cy + S) * k)), j0 : int(np.ceil((cx + S) * k))] = True
            thought[f][seen_mask] = minimap[seen_mask]
            scene.frame_rect(thought[f], cx * k, cy * k, (cx + S) * k, (cy + S) * k, scene.WHITE)
            state.append({"probe": answer if seen[0] and seen[1] else 4, "camera": [round(float(cx / S), 4), round(float(cy / S), 4)]})
        A, B = f"{names[0]} {kinds[0]}", f"{names[1]} {kinds[1]}"  # noqa: N806
        d = (pts[0] - pts[1]) / S
        return Episode(
            video=video,
            thought=thought,
            question=f"The camera pans over a larger scene. Where is the {A} relative to the {B}?",
            correct=f"{QUADS[answer]} it",
            distractors=[f"{q} it" for i, q in enumerate(QUADS) if i != answer],
            rationale=(
                f"Putting the views together, the {B} is at ({pts[1, 0] / S:.2f}, {pts[1, 1] / S:.2f}) and "
                f"the {A} at ({pts[0, 0] / S:.2f}, {pts[0, 1] / S:.2f}) in scene units (canvas widths), "
                f"{abs(d[0]):.2f} to the {'left' if d[0] < 0 else 'right'} and {abs(d[1]):.2f} "
                f"{'up' if d[1] < 0 else 'down'}: {QUADS[answer]} the {B}."
            ),
            state=state,
        )
