"""Direction of motion: which way did the <colour> <shape> move?

Objects move on a wrap-around canvas (leaving one side, re-entering the opposite one), so
their start and end positions are uniform whatever the direction: a single frame says
nothing. At hard level there are 8 directions and the distractors are the opposite and the
two neighbouring directions (near misses). Thought video: motion trails over the last five frames.
"""

from __future__ import annotations

import numpy as np

from stormvl.synth import scene
from stormvl.synth.base import Ctx, Episode, Family

DIRS8 = ["right", "down and to the right", "down", "down and to the left",
         "left", "up and to the left", "up", "up and to the right"]  # 45 degree steps


def draw_wrapped(img, kind, x, y, r, color, size, alpha=1.0):
    """Draw a shape on a torus: copies shifted by one canvas cover the edges."""
    for dx in (-size, 0, size):
        for dy in (-size, 0, size):
            if -r <= x + dx <= size + r and -r <= y + dy <= size + r:
                scene.shape(img, kind, x + dx, y + dy, r, color, alpha)


def wrapped_trail(img, pts, color, size, width=1.2, alpha=0.6):
    """Trail through torus positions, broken where the object wraps around."""
    for (ax, ay), (bx, by) in zip(pts[:-1], pts[1:], strict=False):
        if abs(bx - ax) < size / 2 and abs(by - ay) < size / 2:
            scene.segment(img, ax, ay, bx, by, color, width, alpha)


class Direction(Family):
    name = "direction"
    description = "Tell which way one object moved among several moving objects."
    probe = "direction index (0 = right, clockwise in 45 degree steps) of the target's motion"
    levels = {
        "easy": {"objects": (2, 2), "speed": (0.04, 0.06)},
        "medium": {"objects": (3, 4), "speed": (0.03, 0.05)},
        "hard": {"objects": (4, 5), "speed": (0.02, 0.04)},
        "ood": {"speed": (0.065, 0.08)},
    }

    def make(self, ctx: Ctx) -> Episode:
        rng, T, S = ctx.rng, ctx.T, ctx.S
        n, speed = ctx.int("objects"), ctx.float("speed")
        eight = ctx.level == "hard"
        answer = ctx.balanced(8) if eight else 2 * ctx.balanced(4)
        dirs = [answer] + [int(rng.integers(8)) if eight else 2 * int(rng.integers(4)) for _ in range(n - 1)]
        names = ctx.choice(scene.COLOR_NAMES, n)
        kinds = [ctx.choice(list(scene.SHAPES)) for _ in range(n)]
        r = 0.06 * S
        p0 = rng.uniform(0, S, (n, 2))
        ang = np.array(dirs) * np.pi / 4
        vel = speed * S * np.stack([np.cos(ang), np.sin(ang)], 1)  # y grows downwards
        video, thought = scene.blank(T, S), scene.blank(T, S)
        state = []
        track = np.mod(p0[None] + np.arange(T)[:, None, None] * vel[None], S)  # (T, n, 2)
        for f in range(T):
            for img, see in ((video[f], False), (thought[f], True)):
                if see:
                    for j in range(n):
                        wrapped_trail(img, track[max(0, f - 5) : f + 1, j], scene.PALETTE[names[j]], S)
                for j in range(n):
                    x, y = track[f, j]
                    draw_wrapped(img, kinds[j], x, y, r, scene.PALETTE[names[j]], S)
            state.append({"probe": answer, "xy": [round(float(v) / S, 4) for v in track[f, 0]]})
        if eight:
            distract = [DIRS8[(answer + d) % 8] for d in (4, 1, 7)]
        else:
            distract = [DIRS8[d] for d in (0, 2, 4, 6) if d != answer]
        target = f"{names[0]} {kinds[0]}"
        return Episode(
            video=video,
            thought=thought,
            question=f"Objects move and wrap around the edges of the picture. Which way does the {target} move?",
            correct=DIRS8[answer],
            distractors=distract,
            rationale=(
                f"The {target} starts at ({p0[0, 0] / S:.2f}, {p0[0, 1] / S:.2f}) and moves "
                f"{speed:.3f} widths per frame; its x changes by {vel[0, 0] / S:+.3f} and its y by "
                f"{vel[0, 1] / S:+.3f} each frame (y grows downwards), so it moves {DIRS8[answer]}."
            ),
            state=state,
        )
