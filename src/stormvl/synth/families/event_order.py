"""Event order: lamps light up one at a time; in what order did they light?

All lamps are dark in the first and last frame, so single frames carry no order. The
distractors are other orders of the same lamps (adjacent swaps at hard level: near misses).
Thought video: a timeline strip that records each flash as it happens.
"""

from __future__ import annotations

import numpy as np

from stormvl.synth import scene
from stormvl.synth.base import Ctx, Episode, Family, spans


def place(rng, n: int, size: int, radius: float, lo=0.12, hi=0.78, sep=2.6):
    """``n`` random centres in [lo, hi] * size at least ``sep * radius`` apart."""
    for _ in range(1000):
        pts = rng.uniform(lo * size, hi * size, (n, 2))
        d = np.linalg.norm(pts[:, None] - pts[None], axis=-1) + np.eye(n) * 1e9
        if d.min() >= sep * radius:
            return pts
    raise RuntimeError("could not place objects")  # pragma: no cover


def dim(color, k=0.3):
    return tuple(int(c * k) for c in color)


def order_text(names) -> str:
    return ", then ".join(names)


class EventOrder(Family):
    name = "event_order"
    description = "Recall the order in which lamps lit up (temporal order of events)."
    probe = "palette index of the lamp that lit most recently (-1 before the first)"
    chain = "events"
    levels = {
        "easy": {"events": (3, 3), "extra": (0, 0)},
        "medium": {"events": (3, 4), "extra": (0, 1)},
        "hard": {"events": (4, 4), "extra": (1, 2)},
        "ood": {"events": (5, 5)},
    }

    def make(self, ctx: Ctx) -> Episode:
        rng, T, S = ctx.rng, ctx.T, ctx.S
        k, extra = ctx.int("events"), ctx.int("extra")
        names = ctx.choice(scene.COLOR_NAMES, k + extra)
        r = 0.07 * S
        pos = place(rng, k + extra, S, r)
        order = [int(i) for i in rng.permutation(k)]  # lamp indices in flash order
        min_len = -(-T // 8) if ctx.level == "easy" else 1
        times = spans(k, T, min_len, rng, gap=1)
        video, thought = scene.blank(T, S), scene.blank(T, S)
        state = []
        for f in range(T):
            lit = next((order[e] for e, (a, b) in enumerate(times) if a <= f < b), None)
            started = [order[e] for e, (a, _) in enumerate(times) if a <= f]
            for img, see in ((video[f], False), (thought[f], True)):
                for j, (x, y) in enumerate(pos):
                    col = scene.PALETTE[names[j]]
                    scene.circle(img, x, y, r, col if j == lit else dim(col))
                    if j == lit:
                        scene.ring(img, x, y, r + 2, scene.WHITE, 1.5)
                if see:  # the remembered timeline
                    for e, j in enumerate(started):
                        x0 = 0.06 * S + e * 0.12 * S
                        scene.rect(img, x0, 0.88 * S, x0 + 0.09 * S, 0.96 * S, scene.PALETTE[names[j]])
            last = scene.COLOR_NAMES.index(names[started[-1]]) if started else -1
            state.append({"probe": last, "lit": names[lit] if lit is not None else None})
        truth = [names[j] for j in order]
        perms = set()
        if ctx.level == "hard":  # near misses first: swap two neighbouring events
            for i in range(k - 1):
                p = list(truth)
                p[i], p[i + 1] = p[i + 1], p[i]
                perms.add(order_text(p))
        while len(perms) < 3:
            p = [truth[int(i)] for i in rng.permutation(k)]
            if p != truth:
                perms.add(order_text(p))
        distract = sorted(perms)
        steps = [f"frame {a + 1}: the {names[j]} lamp" for (a, _), j in zip(times, order, strict=True)]
        return Episode(
            video=video,
            thought=thought,
            question="Some lamps light up one after another. In what order did they light up?",
            correct=order_text(truth),
            distractors=distract,
            rationale="Flashes seen: " + "; ".join(steps) + f". So the order is {order_text(truth)}.",
            state=state,
        )
