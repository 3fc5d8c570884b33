"""Shell game: a ball is hidden under one of N identical cups, the cups swap in pairs.

Why it needs the whole video: the cups look identical, so only the sequence of swaps tells
where the ball is. The final slot is drawn independently of the start slot (the swap
sequence is sampled conditioned on it), so neither the first frame (ball visible) nor the
last frame (identical cups) predicts the answer. Thought video: the cups are see-through
and the ball rides along with its cup.
"""

from __future__ import annotations

import numpy as np

from stormvl.synth import scene
from stormvl.synth.base import Ctx, Episode, Family, ordinal


def _swaps_to(rng, n_cups, n_swaps, start, end):
    """A random sequence of slot pairs that moves the ball from ``start`` to ``end``."""
    while True:
        seq = [tuple(sorted(rng.choice(n_cups, 2, replace=False).tolist())) for _ in range(n_swaps)]
        pos = start
        for a, b in seq:
            pos = b if pos == a else a if pos == b else pos
        if pos == end:
            return seq


# ball radius as a share of a cup's half width. At 0.45 (generator version 1) the ball was a
# 3-pixel dot on 48-pixel frames: its start slot moved the frozen tiny tower's features by
# ~6% of their norm, and one textcot seed in five had not learned to read it after 1,000
# steps (docs/demo.md, finding 10). At 0.9 the gap doubles and the ball still fits inside a
# cup (the thought video shows it through the see-through cups).
BALL_R = 0.9


def slot_name(k: int) -> str:
    return f"the {ordinal(k + 1)} cup from the left"


class ShellGame(Family):
    name = "shell_game"
    description = "Track a ball hidden under identical cups through pairwise swaps."
    probe = "slot (0 = leftmost) of the cup that holds the ball"
    chain = "swaps"
    levels = {
        "intro": {"cups": (4, 4), "swaps": (0, 0)},  # the foothold: the ball stays put
        "easy": {"cups": (4, 4), "swaps": (1, 2)},
        "medium": {"cups": (4, 5), "swaps": (2, 4)},
        "hard": {"cups": (5, 5), "swaps": (4, 6)},
        "ood": {"cups": (6, 6)},
    }

    def make(self, ctx: Ctx) -> Episode:
        rng, T, S = ctx.rng, ctx.T, ctx.S
        n = ctx.int("cups")
        reveal = max(2, -(-T // 8))
        n_swaps = min(ctx.int("swaps"), (T - reveal - 1) // 2)
        ctx.params["swaps"] = n_swaps
        start, end = int(rng.integers(n)), int(rng.integers(n))
        end = start if n_swaps == 0 else end  # no swaps: the ball stays put
        swaps = _swaps_to(rng, n, n_swaps, start, end)
        # Timeline: frames [0, reveal) show the ball; each swap then takes ``dur`` >= 2 frames.
        dur = int(np.clip((T - reveal - 1) // max(n_swaps, 1), 2, max(4, -(-T // 8))))
        free = T - reveal - 1 - dur * n_swaps
        extra = rng.multinomial(free, np.ones(n_swaps + 1) / (n_swaps + 1)) if n_swaps else [free]
        starts, t = [], reveal + int(extra[0])
        for k in range(n_swaps):
            starts.append(t)
            t += dur + int(extra[k + 1])
        slot_x = S * (np.arange(n) + 1) / (n + 1)
        half_w, height = 0.36 * S / (n + 1), 0.5 * S / (n + 1) + 0.06 * S
        base_y, ball_r = 0.58 * S, BALL_R * half_w
        video, thought = scene.blank(T, S), scene.blank(T, S)
        state, cup_at = [], list(range(n))  # cup_at[slot] = cup id
        ball_cup = start
        step = 0
        for f in range(T):
            # cup id -> (x, y) for this frame
            pos = {c: (slot_x[s], base_y) for s, c in enumerate(cup_at)}
            if step < n_swaps and f >= starts[step]:
                a, b = swaps[step]
                p = min(1.0, (f - starts[step] + 1) / dur)
                lift = 0.12 * S * np.sin(np.pi * p)
                ca, cb = cup_at[a], cup_at[b]
                pos[ca] = (slot_x[a] + (slot_x[b] - slot_x[a]) * p, base_y - lift)
                pos[cb] = (slot_x[b] + (slot_x[a] - slot_x[b]) * p, base_y + lift * 0.6)
                if p >= 1.0:
                    cup_at[a], cup_at[b] = cb, ca
                    step += 1
            raised = f < reveal
            bx, by = pos[ball_cup]
            ball_y = by + height / 2 - ball_r - 1
            for img, see_through in ((video[f], False), (thought[f], True)):
                if raised or see_through:
                    scene.circle(img, bx, ball_y, ball_r, scene.PALETTE["red"])
                for x, y in pos.values():
                    y = y - 0.22 * S if raised else y
                    scene.cup(img, x, y, half_w, height, scene.CUP, 0.35 if see_through else 1.0)
            slot = int(np.argmin(np.abs(slot_x - bx)))
            state.append({"probe": slot, "ball_x": round(float(bx) / S, 4), "visible": raised})
        assert cup_at.index(ball_cup) == end
        words = [f"The ball starts under {slot_name(start)}."]
        where = start
        for k, (a, b) in enumerate(swaps, 1):
            where = b if where == a else a if where == b else where
            words.append(
                f"Swap {k}: the cups in positions {a + 1} and {b + 1} trade places; "
                f"the ball is now in position {where + 1}."
            )
        words.append(f"So the ball ends under {slot_name(end)}.")
        return Episode(
            video=video,
            thought=thought,
            question=f"A ball is hidden under one of {n} cups, which are then swapped. "
            "Under which cup is the ball at the end?",
            correct=slot_name(end),
            distractors=[slot_name(k) for k in range(n) if k != end],
            rationale=" ".join(words),
            state=state,
            universe=[slot_name(k) for k in range(n)],
        )
