"""Speed: which ball is the fastest?

Balls run along their own lanes and wrap around, so single frames show uniform positions.
The margin knob is the ratio between the fastest and the second fastest speed. Thought
video: motion streaks over the last three frames, whose length is the speed.
"""

from __future__ import annotations

import numpy as np

from stormvl.synth import scene
from stormvl.synth.base import Ctx, Episode, Family


class Speed(Family):
    name = "speed"
    description = "Compare speeds: which of four balls moves the fastest (or the slowest)?"
    probe = "palette index of the ball asked about (fastest or slowest)"
    levels = {
        "easy": {"margin": (1.8, 2.4)},
        "medium": {"margin": (1.45, 1.8)},
        "hard": {"margin": (1.2, 1.45)},
        "ood": {"margin": (1.06, 1.14)},
    }

    def make(self, ctx: Ctx) -> Episode:
        rng, T, S = ctx.rng, ctx.T, ctx.S
        margin = ctx.float("margin")
        slowest = ctx.level != "easy" and ctx.balanced(2, "which") == 1
        names = ctx.choice(scene.COLOR_NAMES, 4)
        answer = ctx.balanced(4)
        # speeds in canvas widths per frame; the asked ball beats the best other by ``margin``
        others = rng.uniform(0.02, 0.045, 3)
        if slowest:
            base = others.min()
            asked = base / margin
        else:
            base = others.max()
            asked = base * margin
        speeds = np.insert(others, answer, asked) * S
        sign = rng.choice([-1.0, 1.0], 4)
        lanes = rng.permutation(4)
        lane_y = S * (0.2 + 0.2 * lanes)
        x0 = rng.uniform(0, S, 4)
        r = 0.055 * S
        video, thought = scene.blank(T, S), scene.blank(T, S)
        state = []
        probe = scene.COLOR_NAMES.index(names[answer])
        for f in range(T):
            for img, see in ((video[f], False), (thought[f], True)):
                for j in range(4):
                    scene.rect(img, 0, lane_y[j] + r + 1, S, lane_y[j] + r + 2, scene.GREY)
                    x = (x0[j] + sign[j] * speeds[j] * f) % S
                    col = scene.PALETTE[names[j]]
                    if see:
                        tail = x - sign[j] * speeds[j] * min(f, 3)
                        for dx in (-S, 0, S):
                            scene.segment(img, x + dx, lane_y[j], tail + dx, lane_y[j], col, 1.6 * r, 0.35)
                    for dx in (-S, 0, S):
                        scene.circle(img, x + dx, lane_y[j], r, col)
            state.append({"probe": probe})
        word = "slowest" if slowest else "fastest"
        per = ", ".join(f"{names[j]} {speeds[j] / S:.3f}" for j in range(4))
        return Episode(
            video=video,
            thought=thought,
            question=f"Four balls run along their lanes (wrapping around the edges). Which ball is the {word}?",
            correct=f"the {names[answer]} ball",
            distractors=[f"the {c} ball" for j, c in enumerate(names) if j != answer],
            rationale=f"Distance per frame in canvas widths: {per}. The {word} is the {names[answer]} ball.",
            state=state,
        )
