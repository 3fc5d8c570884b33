"""Occluded trajectory: a ball rolls behind a wall; through which gate will it come out?

The exit height is drawn independently of the start height (the line, or with bounces its
unfolded line, is fitted between the two), so the first frame says nothing about the
answer, and the video ends while the ball is still hidden. Only the visible motion (slope,
and at hard levels the bounces off the corridor walls) predicts the exit. Thought video:
the wall is see-through and the rest of the path to the exit is drawn.
"""

from __future__ import annotations

import numpy as np

from stormvl.synth import scene
from stormvl.synth.base import Ctx, Episode, Family


def _fold(y: np.ndarray, top: float, bottom: float) -> np.ndarray:
    """Reflect an unfolded coordinate back into [top, bottom] (elastic bounces)."""
    span = bottom - top
    u = np.mod(y - top, 2 * span)
    return top + np.where(u <= span, u, 2 * span - u)


class OccludedTrajectory(Family):
    name = "occluded_trajectory"
    description = "Predict where a ball that rolls behind a wall will come out (hidden motion)."
    probe = "vertical quarter (0 = top) the ball is in, hidden or not"
    chain = "bounces"
    levels = {
        "easy": {"hidden": (0.35, 0.5), "bounces": (0, 0)},
        "medium": {"hidden": (0.45, 0.6), "bounces": (0, 1)},
        "hard": {"hidden": (0.55, 0.7), "bounces": (1, 1)},
        "ood": {"hidden": (0.75, 0.85)},
    }

    def make(self, ctx: Ctx) -> Episode:
        rng, T, S = ctx.rng, ctx.T, ctx.S
        hidden, bounces = ctx.float("hidden"), ctx.int("bounces")
        colors = ctx.choice(scene.COLOR_NAMES, 5)
        ball_c, gates = colors[0], colors[1:]
        top, bottom = 0.1 * S, 0.9 * S
        r = 0.045 * S
        lo, hi = top + r, bottom - r  # the ball centre's corridor
        band = (hi - lo) / 4
        answer = ctx.balanced(4)
        y_end = lo + band * (answer + rng.uniform(0.2, 0.8))
        y_start = rng.uniform(lo, hi)
        if bounces:  # aim at a mirror image of the exit so the folded path bounces
            up = rng.random() < 0.5
            y_aim = 2 * lo - y_end if up else 2 * hi - y_end
        else:
            y_aim = y_end
        wall_x1 = 0.88 * S
        x_start = rng.uniform(0.06, 0.14) * S
        x_end = wall_x1 - r - 1  # still hidden on the last frame
        wall_x0 = x_start + (1 - hidden) * (x_end - x_start) + r
        tt = np.arange(T) / (T - 1)
        xs = x_start + tt * (x_end - x_start)
        ys = _fold(y_start + tt * (y_aim - y_start), lo, hi)
        video, thought = scene.blank(T, S), scene.blank(T, S)
        state = []
        gate_y = [(lo + band * k, lo + band * (k + 1)) for k in range(4)]
        for f in range(T):
            for img, see in ((video[f], False), (thought[f], True)):
                if see:
                    scene.circle(img, xs[f], ys[f], r, scene.PALETTE[ball_c])
                    path = np.stack([xs[f:], ys[f:]], 1)
                    scene.polyline(img, path, scene.PALETTE[ball_c], 1.2, 0.6)
                    scene.frame_rect(img, wall_x0, top, wall_x1, bottom, scene.GREY, 1.0)
                else:
                    scene.circle(img, xs[f], ys[f], r, scene.PALETTE[ball_c])
                    scene.rect(img, wall_x0, top, wall_x1, bottom, scene.GREY)
                scene.rect(img, 0, top - 2, S, top, scene.WHITE)  # corridor rails
                scene.rect(img, 0, bottom, S, bottom + 2, scene.WHITE)
                for k, (g0, g1) in enumerate(gate_y):
                    scene.rect(img, wall_x1, g0 + 1, wall_x1 + 0.05 * S, g1 - 1, scene.PALETTE[gates[k]])
            q = int(np.clip((ys[f] - lo) // band, 0, 3))
            hid = bool(xs[f] + r > wall_x0)
            state.append({"probe": q, "x": round(float(xs[f]) / S, 4), "y": round(float(ys[f]) / S, 4), "hidden": hid})
        t_in = int(np.argmax(xs + r > wall_x0))
        bounce_txt = f", bounces {'off the top' if y_aim < lo else 'off the bottom'} of the corridor" if bounces else ""
        rationale = (
            f"The {ball_c} ball moves right from height {y_start / S:.2f} and disappears behind the wall "
            f"at frame {t_in + 1}. Continuing its path{bounce_txt}, it reaches the right side at height "
            f"{y_end / S:.2f}, which is the {gates[answer]} gate."
        )
        return Episode(
            video=video,
            thought=thought,
            question=f"The {ball_c} ball rolls behind the grey wall. Through which coloured gate on "
            "the right of the wall will it come out?",
            correct=f"the {gates[answer]} gate",
            distractors=[f"the {g} gate" for k, g in enumerate(gates) if k != answer],
            rationale=rationale,
            state=state,
            universe=[f"the {g} gate" for g in gates],  # top to bottom: a letter is a height
        )
