"""Event counting: balls of several colours drop into an opaque box; how many were red?

The box hides its contents, so the last frame shows no count; the first frame is empty.
The four options are a window of consecutive counts drawn first, and the answer is drawn
uniformly inside it, so every number is equally likely to be right whenever it is offered
(no text prior). Thought video: the box is see-through and a tally counts the target colour.
"""

from __future__ import annotations

import numpy as np

from stormvl.synth import scene
from stormvl.synth.base import Ctx, Episode, Family


class EventCount(Family):
    name = "event_count"
    description = "Count how many balls of one colour dropped into an opaque box."
    probe = "number of target-colour balls in the box so far"
    levels = {
        "easy": {"window": (0, 1), "others": (0, 1)},
        "medium": {"window": (1, 3), "others": (1, 3)},
        "hard": {"window": (2, 4), "others": (3, 5)},
        "ood": {"window": (5, 6)},
    }

    def make(self, ctx: Ctx) -> Episode:
        rng, T, S = ctx.rng, ctx.T, ctx.S
        w, n_other = ctx.int("window"), ctx.int("others")
        answer = w + ctx.balanced(4)
        names = ctx.choice(scene.COLOR_NAMES, 3)
        target = names[0]
        drop = max(2, -(-T // 8))  # frames a ball is visible while falling
        lanes = 8
        box = (0.14 * S, 0.62 * S, 0.86 * S, 0.92 * S)
        lane_x = box[0] + (np.arange(lanes) + 0.5) * (box[2] - box[0]) / lanes
        busy = np.zeros((lanes, T), bool)
        drops = []  # (start frame, lane, colour name)
        colours = [target] * answer + [names[1 + int(rng.integers(2))] for _ in range(n_other)]
        for c in colours:
            for _ in range(200):
                s, lane = int(rng.integers(1, T - drop)), int(rng.integers(lanes))
                if not busy[lane, s : s + drop].any():
                    busy[lane, s : s + drop] = True
                    drops.append((s, lane, c))
                    break
            else:  # no room left: only distractors may be dropped from the schedule
                assert c != target, "event_count: no room for the target drops"
        drops.sort()
        r = 0.035 * S
        y0, y1 = 0.06 * S, box[1] - r
        video, thought = scene.blank(T, S), scene.blank(T, S)
        state = []
        for f in range(T):
            landed = [(s, lane, c) for s, lane, c in drops if f >= s + drop]
            n_in = sum(c == target for _, _, c in landed)
            for img, see in ((video[f], False), (thought[f], True)):
                for s, lane, c in drops:
                    if s <= f < s + drop:
                        p = (f - s + 1) / (drop + 1)
                        scene.circle(img, lane_x[lane], y0 + (y1 - y0) * p, r, scene.PALETTE[c])
                if see:
                    depth = np.zeros(lanes)
                    for _, lane, c in landed:
                        scene.circle(img, lane_x[lane], box[3] - r - 1 - depth[lane], r, scene.PALETTE[c])
                        depth[lane] += 2 * r
                    scene.rect(img, *box, scene.CUP, 0.3)
                    scene.tally(img, n_in, 0.04 * S, 0.04 * S, scene.PALETTE[target], unit=max(2.0, S / 40))
                else:
                    scene.rect(img, *box, scene.CUP)
            state.append({"probe": n_in, "in_box": len(landed)})
        assert state[-1]["probe"] == answer
        when = [s + drop + 1 for s, _, c in drops if c == target]
        return Episode(
            video=video,
            thought=thought,
            question=f"Balls drop into the box. How many {target} balls fell into the box?",
            correct=str(answer),
            distractors=[str(w + k) for k in range(4) if w + k != answer],
            rationale=(
                f"{len(drops)} balls drop in total. The {target} ones land at frames "
                f"{', '.join(map(str, when)) or '(none)'}, so {answer} {target} balls are in the box."
            ),
            state=state,
        )
