"""Collision prediction: which ball will the white ball hit (after the video ends)?

Targets are placed before the answer is used and the white ball's velocity is the only
thing aimed at the chosen target, so single frames show positions that do not pick it out.
The clip stops well before the contact (the horizon knob). Thought video: the future
rollout - the rest of the white ball's path and ghosts of both balls at the contact.
"""

from __future__ import annotations

import numpy as np

from stormvl.synth import scene
from stormvl.synth.base import Ctx, Episode, Family


def first_contact(m0, u, p0, v, reach, t_max):
    """Earliest time in [0, t_max] at which |m(t) - p(t)| <= reach (inf when never).

    m(t) = m0 + u t, p(t) = p0 + v t: a quadratic in t.
    """
    d0, dv = m0 - p0, u - v
    a, b, c = dv @ dv, 2 * d0 @ dv, d0 @ d0 - reach * reach
    if c <= 0:
        return 0.0
    disc = b * b - 4 * a * c
    if a == 0 or disc < 0:
        return np.inf
    t = (-b - np.sqrt(disc)) / (2 * a)
    return float(t) if 0 <= t <= t_max else np.inf


class Collision(Family):
    name = "collision"
    description = "Predict which ball the moving white ball will hit after the clip ends."
    probe = "palette index of the ball on course to be hit"
    levels = {
        "easy": {"horizon": (1.5, 1.8), "drift": (0.0, 0.0)},
        "medium": {"horizon": (1.7, 2.2), "drift": (0.0, 0.15)},
        "hard": {"horizon": (2.0, 2.6), "drift": (0.1, 0.3)},
        "ood": {"horizon": (3.0, 3.6)},
    }

    def _scene(self, ctx: Ctx, answer: int):
        rng, T, S = ctx.rng, ctx.T, ctx.S
        rt, rm = 0.06 * S, 0.045 * S
        horizon, drift = ctx.float("horizon"), ctx.float("drift")
        t_c = (T - 1) * horizon
        lo, hi = 0.1 * S, 0.9 * S
        for _ in range(2000):
            p0 = rng.uniform(lo, hi, (4, 2))
            if min(np.linalg.norm(p0[i] - p0[j]) for i in range(4) for j in range(i)) < 3.2 * rt:
                continue
            ang = rng.uniform(0, 2 * np.pi, 4)
            v = drift * S / t_c * np.stack([np.cos(ang), np.sin(ang)], 1) * rng.uniform(0.5, 1, (4, 1))
            ends = p0 + v * t_c
            if ends.min() < rt or ends.max() > S - rt:
                continue
            m0 = rng.uniform(lo, hi, 2)
            if np.linalg.norm(p0 - m0, axis=1).min() < 3.5 * rt:
                continue
            if np.linalg.norm(ends[answer] - m0) < min(0.7, 0.25 * horizon) * S:
                continue  # the white ball must visibly move during the clip
            u = (ends[answer] - m0) / t_c
            reach = rt + rm
            hits = [first_contact(m0, u, p0[j], v[j], reach + (0 if j == answer else 0.6 * rt), t_c) for j in range(4)]
            t_hit = hits[answer]
            if t_hit < T - 0.5 or min(h for j, h in enumerate(hits) if j != answer) < np.inf:
                continue
            return m0, u, p0, v, t_hit
        raise RuntimeError("collision: no valid scene found")  # pragma: no cover

    def make(self, ctx: Ctx) -> Episode:
        T, S = ctx.T, ctx.S
        names = ctx.choice(scene.COLOR_NAMES, 4)
        answer = ctx.balanced(4)
        m0, u, p0, v, t_hit = self._scene(ctx, answer)
        rt, rm = 0.06 * S, 0.045 * S
        video, thought = scene.blank(T, S), scene.blank(T, S)
        m_hit, p_hit = m0 + u * t_hit, p0[answer] + v[answer] * t_hit
        probe = scene.COLOR_NAMES.index(names[answer])
        state = []
        for f in range(T):
            m, p = m0 + u * f, p0 + v * f
            for img, see in ((video[f], False), (thought[f], True)):
                if see:
                    scene.segment(img, m[0], m[1], m_hit[0], m_hit[1], scene.WHITE, 1.2, 0.5)
                    scene.circle(img, p_hit[0], p_hit[1], rt, scene.PALETTE[names[answer]], 0.4)
                    scene.circle(img, m_hit[0], m_hit[1], rm, scene.WHITE, 0.5)
                for j in range(4):
                    scene.circle(img, p[j, 0], p[j, 1], rt, scene.PALETTE[names[j]])
                scene.circle(img, m[0], m[1], rm, scene.WHITE)
            state.append({"probe": probe, "white": [round(float(m[0] / S), 4), round(float(m[1] / S), 4)]})
        rationale = (
            f"The white ball moves from ({m0[0] / S:.2f}, {m0[1] / S:.2f}) at "
            f"{np.linalg.norm(u) / S:.3f} canvas widths per frame. Extending its path, it meets the "
            f"{names[answer]} ball near ({m_hit[0] / S:.2f}, {m_hit[1] / S:.2f}) about "
            f"{t_hit - (T - 1):.1f} frames after the clip ends, before reaching any other ball."
        )
        return Episode(
            video=video,
            thought=thought,
            question="If everything keeps moving the same way, which ball will the white ball hit first?",
            correct=f"the {names[answer]} ball",
            distractors=[f"the {c} ball" for j, c in enumerate(names) if j != answer],
            rationale=rationale,
            state=state,
        )
