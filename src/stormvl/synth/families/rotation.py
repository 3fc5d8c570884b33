"""Rotation: which way and how far did the <colour> wheel turn?

The marker's start angle is uniform, so its end angle is uniform too whatever the turn:
neither single frame carries the answer. The four options are always the same
(direction x amount), so there is no text prior. Thought video: the marker's swept arc.
"""

from __future__ import annotations

import numpy as np

from stormvl.synth import scene
from stormvl.synth.base import Ctx, Episode, Family
from stormvl.synth.families.event_order import place

TURN_WORDS = {0.25: "a quarter turn", 0.5: "half a turn", 0.75: "three quarters of a turn",
              1.0: "a full turn", 1.25: "one and a quarter turns"}


class Rotation(Family):
    name = "rotation"
    description = "Tell the direction and amount of a wheel's rotation (clockwise or not, how far)."
    probe = "signed rotation so far of the target wheel, in eighths of a turn (clipped to -10..10)"
    levels = {
        "easy": {"wheels": (1, 1), "turns": (0.25, 0.5)},
        "medium": {"wheels": (2, 2), "turns": (0.25, 0.5)},
        "hard": {"wheels": (2, 3), "turns": (0.5, 0.75)},
        "ood": {"turns": (1.0, 1.25)},
    }

    def make(self, ctx: Ctx) -> Episode:
        rng, T, S = ctx.rng, ctx.T, ctx.S
        n = ctx.int("wheels")
        amounts = ctx.knobs["turns"]
        answer = ctx.balanced(4)
        cw, turn = answer < 2, amounts[answer % 2]
        ctx.params["turns"] = turn
        names = ctx.choice(scene.COLOR_NAMES, n)
        R = 0.16 * S if n > 1 else 0.25 * S  # noqa: N806 - wheel radius
        centres = place(rng, n, S, R, lo=0.2, hi=0.8, sep=2.3) if n > 1 else np.array([[S / 2, S / 2]])
        start = rng.uniform(0, 2 * np.pi, n)
        spin = [(1 if cw else -1) * turn] + [
            float(rng.choice([-1, 1]) * rng.choice(amounts)) for _ in range(n - 1)
        ]
        frac = np.arange(T) / (T - 1)
        video, thought = scene.blank(T, S), scene.blank(T, S)
        state = []
        for f in range(T):
            for img, see in ((video[f], False), (thought[f], True)):
                for j in range(n):
                    cx, cy = centres[j]
                    col = scene.PALETTE[names[j]]
                    scene.circle(img, cx, cy, R, tuple(int(c * 0.45) for c in col))
                    scene.ring(img, cx, cy, R, col, 2.0)
                    a = start[j] + 2 * np.pi * spin[j] * frac[f]  # screen angle: y down = clockwise
                    mx, my = cx + 0.72 * R * np.cos(a), cy + 0.72 * R * np.sin(a)
                    scene.segment(img, cx, cy, mx, my, col, 2.0)
                    scene.circle(img, mx, my, 0.18 * R, scene.WHITE)
                    if see:
                        sweep = 2 * np.pi * spin[j] * frac[f]
                        scene.arc(img, cx, cy, 1.12 * R, start[j], sweep, scene.WHITE, 1.5, 0.8)
            done = int(np.clip(np.round(spin[0] * frac[f] * 8), -10, 10))
            state.append({"probe": done})
        options = [f"{d}, {TURN_WORDS[a]}" for d in ("clockwise", "counterclockwise") for a in amounts]
        return Episode(
            video=video,
            thought=thought,
            question=f"How does the {names[0]} wheel turn during the video (follow its white marker)?",
            correct=options[answer],
            distractors=[o for k, o in enumerate(options) if k != answer],
            rationale=(
                f"The marker on the {names[0]} wheel starts at {np.degrees(start[0]) % 360:.0f} degrees and "
                f"advances {360 * turn / (T - 1):.1f} degrees per frame "
                f"{'clockwise' if cw else 'counterclockwise'}, {TURN_WORDS[turn]} in total."
            ),
            state=state,
        )
