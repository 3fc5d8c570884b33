"""State change (middle state): an object changes colour several times; what came before the last?

The first colour and the final colour are visible in the first and last frame, so they are
never offered as options; the answer and the distractors are drawn from the remaining
colours (at medium / hard the other intermediate colours are near-miss distractors).
Thought video: a memory strip of the colours the object has had so far.
"""

from __future__ import annotations

from stormvl.synth import scene
from stormvl.synth.base import Ctx, Episode, Family, durations
from stormvl.synth.families.event_order import place


class StateChange(Family):
    name = "state_change"
    description = "Recall an object's intermediate colour (the state just before the final one)."
    probe = "palette index of the target's previous colour (-1 before its first change)"
    levels = {
        "easy": {"states": (3, 3), "others": (0, 1)},
        "medium": {"states": (3, 4), "others": (1, 2)},
        "hard": {"states": (4, 4), "others": (2, 3)},
        "ood": {"states": (5, 6)},
    }

    def make(self, ctx: Ctx) -> Episode:
        rng, T, S = ctx.rng, ctx.T, ctx.S
        k, n_other = ctx.int("states"), ctx.int("others")
        first, answer, final = ctx.choice(scene.COLOR_NAMES, 3)
        seq = [first]
        for _ in range(k - 3):  # free intermediate colours: not the final one, no repeats in a row
            seq.append(ctx.choice(scene.COLOR_NAMES, exclude=(seq[-1], final)))
        if seq[-1] == answer:
            seq[-1] = ctx.choice(scene.COLOR_NAMES, exclude=(seq[-2] if len(seq) > 1 else first, answer, final))
        seq += [answer, final]
        kinds = ctx.choice(list(scene.SHAPES), 1 + n_other)
        r = 0.09 * S
        pos = place(rng, 1 + n_other, S, r, lo=0.15, hi=0.8, sep=2.4)
        min_len = -(-T // 8) if ctx.level == "easy" else 1
        dur = durations(k, T, min_len, rng)
        state_at = [i for i, d in enumerate(dur) for _ in range(d)]  # (T,) state index
        # distractor objects change colour at their own random times
        other_cols = []
        for _ in range(n_other):
            cols = [ctx.choice(scene.COLOR_NAMES)]
            for _ in range(int(rng.integers(1, 4))):
                cols.append(ctx.choice(scene.COLOR_NAMES, exclude=(cols[-1],)))
            d = durations(len(cols), T, 1, rng)
            other_cols.append([c for c, n in zip(cols, d, strict=True) for _ in range(n)])
        video, thought = scene.blank(T, S), scene.blank(T, S)
        state = []
        for f in range(T):
            i = state_at[f]
            for img, see in ((video[f], False), (thought[f], True)):
                scene.shape(img, kinds[0], pos[0, 0], pos[0, 1], r, scene.PALETTE[seq[i]])
                for j in range(n_other):
                    scene.shape(img, kinds[j + 1], pos[j + 1, 0], pos[j + 1, 1], r, scene.PALETTE[other_cols[j][f]])
                if see:  # memory strip of past colours of the target
                    for m in range(i):
                        x0 = 0.05 * S + m * 0.1 * S
                        scene.rect(img, x0, 0.03 * S, x0 + 0.08 * S, 0.1 * S, scene.PALETTE[seq[m]])
            prev = scene.COLOR_NAMES.index(seq[i - 1]) if i else -1
            state.append({"probe": prev, "color": seq[i]})
        pool = [c for c in scene.COLOR_NAMES if c not in (first, final, answer)]
        near = [c for c in seq[1:-2] if c in pool] if ctx.level != "easy" else []
        near = list(dict.fromkeys(near))[:3]
        rest = ctx.choice(pool, 3 - len(near), exclude=near)
        starts = [sum(dur[:m]) + 1 for m in range(k)]
        return Episode(
            video=video,
            thought=thought,
            question=f"The {kinds[0]} changes colour several times and ends {final}. "
            f"What colour was it just before it turned {final}?",
            correct=answer,
            distractors=near + rest,
            rationale=f"The {kinds[0]} is "
            + ", then ".join(f"{c} (from frame {s})" for c, s in zip(seq, starts, strict=True))
            + f". Just before {final} it was {answer}.",
            state=state,
        )
