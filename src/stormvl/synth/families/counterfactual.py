"""Counterfactual removal: which block would the white ball have hit without the one it hit?

The white ball rolls straight and stops at the first block on its path. Behind that block,
on the same line, sits the answer block; the other blocks lie off the line. The question
asks for a re-simulation without the block that was hit. Thought video: that block is drawn
as an outline (removed) and the ball's counterfactual run, on the same time axis, continues
until it stops at the answer block.
"""

from __future__ import annotations

import numpy as np

from stormvl.synth import scene
from stormvl.synth.base import Ctx, Episode, Family


def ray_box(m0, d, centre, half):
    """Distance along unit ray m0 + s d to the box of half-size ``half`` (inf when missed)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (centre - half - m0) / d
        t2 = (centre + half - m0) / d
    lo = np.nanmax(np.minimum(t1, t2))
    hi = np.nanmin(np.maximum(t1, t2))
    return float(lo) if hi >= lo >= 0 else np.inf


def seg_dist(p, a, b):
    """Distance of point p from segment a-b."""
    ab = b - a
    t = np.clip((p - a) @ ab / (ab @ ab), 0, 1)
    return float(np.linalg.norm(p - (a + t * ab)))


class Counterfactual(Family):
    name = "counterfactual"
    description = "Re-simulate a rolling ball with the block it hit removed: what would it hit?"
    probe = "palette index of the block the ball would hit without the removed block"
    levels = {
        "easy": {"others": (3, 3), "miss": (0.12, 0.2)},
        "medium": {"others": (3, 4), "miss": (0.08, 0.14)},
        "hard": {"others": (4, 5), "miss": (0.05, 0.09)},
        "ood": {"others": (6, 6)},
    }

    def _layout(self, ctx: Ctx, n_other: int, miss: float):
        rng, S = ctx.rng, ctx.S
        hb, r = 0.055 * S, 0.04 * S
        lo, hi = 0.1 * S, 0.9 * S
        for _ in range(5000):
            m0 = rng.uniform(lo, hi, 2)
            ang = rng.uniform(0, 2 * np.pi)
            d = np.array([np.cos(ang), np.sin(ang)])
            l1, gap = rng.uniform(0.25, 0.4) * S, rng.uniform(0.2, 0.35) * S
            h_c, a_c = m0 + d * l1, m0 + d * (l1 + gap)
            if min(h_c.min(), a_c.min()) < lo or max(h_c.max(), a_c.max()) > hi:
                continue
            others, tries = [], 0
            while len(others) < n_other and tries < 200:
                tries += 1
                p = rng.uniform(lo, hi, 2)
                # off the path by more than the ball + block, with a difficulty margin
                if seg_dist(p, m0, a_c) < r + hb * 1.42 + miss * S:
                    continue
                if min(np.abs(p - q).max() for q in [h_c, a_c, *others]) < 2.6 * hb:
                    continue
                if np.linalg.norm(p - m0) < 2.5 * hb:
                    continue
                others.append(p)
            if len(others) == n_other:
                return m0, d, h_c, a_c, np.array(others)
        raise RuntimeError("counterfactual: no layout found")  # pragma: no cover

    def make(self, ctx: Ctx) -> Episode:
        T, S = ctx.T, ctx.S
        n_other, miss = ctx.int("others"), ctx.float("miss")
        m0, d, h_c, a_c, others = self._layout(ctx, n_other, miss)
        hb, r = 0.055 * S, 0.04 * S
        names = ctx.choice(scene.COLOR_NAMES, n_other + 2)
        h_name, a_name, o_names = names[0], names[1], names[2:]
        s_h, s_a = ray_box(m0, d, h_c, hb + r), ray_box(m0, d, a_c, hb + r)
        assert np.isfinite(s_h) and np.isfinite(s_a) and s_a > s_h
        speed = s_a / (T - 2)  # the counterfactual run ends at the answer just before the end
        blocks = [(h_c, h_name), (a_c, a_name), *zip(others, o_names, strict=True)]
        video, thought = scene.blank(T, S), scene.blank(T, S)
        probe = scene.COLOR_NAMES.index(a_name)
        state, t_stop = [], s_h / speed
        for f in range(T):
            real = m0 + d * min(speed * f, s_h)
            counter = m0 + d * min(speed * f, s_a)
            for img, see in ((video[f], False), (thought[f], True)):
                for k, (c, name) in enumerate(blocks):
                    if see and k == 0:
                        scene.frame_rect(img, c[0] - hb, c[1] - hb, c[0] + hb, c[1] + hb, scene.PALETTE[name])
                    else:
                        scene.square(img, c[0], c[1], hb, scene.PALETTE[name])
                pos = counter if see else real
                if see:
                    scene.segment(img, m0[0], m0[1], pos[0], pos[1], scene.WHITE, 1.0, 0.4)
                scene.circle(img, pos[0], pos[1], r, scene.WHITE)
            state.append({"probe": probe, "stopped": bool(f >= t_stop)})
        rationale = (
            f"The white ball rolls straight and stops against the {h_name} block at frame "
            f"{int(np.ceil(t_stop)) + 1}. Without the {h_name} block it would keep rolling along the "
            f"same line, pass where the {h_name} block was, and stop against the {a_name} block; "
            f"the other blocks are off its line."
        )
        distract = [f"the {n} block" for n in o_names]
        return Episode(
            video=video,
            thought=thought,
            question=f"If the {h_name} block had not been there, which block would the white ball have hit?",
            correct=f"the {a_name} block",
            distractors=distract,
            rationale=rationale,
            state=state,
        )
