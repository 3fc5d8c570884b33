"""Containment: a gem is dropped into one of several opaque boxes, then boxes pour into others.

A transfer lifts a box over another box and tips its content (if any) into it, so the gem
moves only when its box is the one lifted; transfers of empty boxes look the same. The
final box is drawn independently of the first one (the transfer sequence is sampled
conditioned on it), so the first frame (gem falling in) does not give the answer away.
Thought video: see-through boxes with the gem inside.
"""

from __future__ import annotations

import numpy as np

from stormvl.synth import scene
from stormvl.synth.base import Ctx, Episode, Family


def _transfers_to(rng, n, count, start, end):
    """Random (from, to) box pairs moving the gem from box ``start`` to box ``end``."""
    while True:
        seq = [tuple(int(v) for v in rng.choice(n, 2, replace=False)) for _ in range(count)]
        at = start
        for a, b in seq:
            at = b if at == a else at
        if at == end:
            return seq


class Containment(Family):
    name = "containment"
    description = "Follow a gem through boxes that pour their contents into each other."
    probe = "index (left to right) of the box holding the gem (-1 while it falls)"
    chain = "transfers"
    levels = {
        "easy": {"boxes": (4, 4), "transfers": (1, 2)},
        "medium": {"boxes": (4, 4), "transfers": (2, 3)},
        "hard": {"boxes": (4, 5), "transfers": (3, 4)},
        "ood": {"transfers": (5, 6)},
    }

    def make(self, ctx: Ctx) -> Episode:
        rng, T, S = ctx.rng, ctx.T, ctx.S
        n = ctx.int("boxes")
        drop = max(2, -(-T // 8))
        count = min(ctx.int("transfers"), (T - drop - 1) // 2)
        ctx.params["transfers"] = count
        # frames per transfer: >= 2 (lifted over the target, back); longer clips get longer
        # transfers so easy events stay longer than T/8
        dur = max(2, min((T - drop - 1) // max(count, 1), max(3, -(-T // 8))))
        start, end = int(rng.integers(n)), int(rng.integers(n))
        seq = _transfers_to(rng, n, count, start, end)
        names = ctx.choice(scene.COLOR_NAMES, n)
        free = T - drop - 1 - dur * count
        gaps = rng.multinomial(free, np.ones(count + 1) / (count + 1))
        starts, t = [], drop + int(gaps[0])
        for k in range(count):
            starts.append(t)
            t += dur + int(gaps[k + 1])
        slot_x = S * (np.arange(n) + 1) / (n + 1)
        bw, bh = 0.4 * S / (n + 1), 0.2 * S
        base_y, gem_r = 0.72 * S, 0.45 * bw
        video, thought = scene.blank(T, S), scene.blank(T, S)
        state, holder = [], start
        for f in range(T):
            boxes = {j: (slot_x[j], base_y) for j in range(n)}
            gem = None
            if f < drop:  # the gem falls into box ``start``
                p = (f + 1) / (drop + 1)
                gem = (slot_x[start], 0.08 * S + (base_y - bh / 2 - 0.08 * S) * p)
            k = next((k for k, s in enumerate(starts) if s <= f < s + dur), None)
            if k is not None:
                a, b = seq[k]
                step, n_out = f - starts[k], -(-dur // 2)  # out to the target, then back
                reach = (step + 1) / n_out if step < n_out else (dur - 1 - step) / (dur - n_out)
                lifted = base_y - bh - 0.08 * S if reach > 0 else base_y
                boxes[a] = (slot_x[a] + (slot_x[b] - slot_x[a]) * reach, lifted)
                if step == n_out - 1 and holder == a:
                    holder = b  # poured
            for img, see in ((video[f], False), (thought[f], True)):
                if gem is not None:
                    scene.diamond(img, gem[0], gem[1], gem_r, scene.WHITE)
                if see and gem is None:
                    hx, hy = boxes[holder]
                    scene.diamond(img, hx, hy, gem_r, scene.WHITE)
                for j, (x, y) in boxes.items():
                    scene.rect(img, x - bw, y - bh / 2, x + bw, y + bh / 2, scene.PALETTE[names[j]], 0.4 if see else 1.0)
            state.append({"probe": -1 if gem is not None else holder})
        assert holder == end
        steps, at = [f"The gem drops into the {names[start]} box."], start
        for a, b in seq:
            moved = at == a
            at = b if moved else at
            steps.append(
                f"The {names[a]} box pours into the {names[b]} box"
                + ("; the gem goes with it." if moved else f"; it was empty, the gem stays in the {names[at]} box.")
            )
        return Episode(
            video=video,
            thought=thought,
            question="A white gem is dropped into a box; then boxes pour their contents into other "
            "boxes. Which box holds the gem at the end?",
            correct=f"the {names[end]} box",
            distractors=[f"the {c} box" for j, c in enumerate(names) if j != end],
            rationale=" ".join(steps) + f" So the gem ends in the {names[end]} box.",
            state=state,
            universe=[f"the {c} box" for c in names],  # left to right: a letter is a slot
        )
