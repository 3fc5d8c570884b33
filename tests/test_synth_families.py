"""Every task family: valid items, determinism, balance, hidden-state thoughts, ood ranges."""

import json
from collections import Counter

import numpy as np
import pytest

from stormvl.data.manifest import LETTERS, Sample
from stormvl.errors import UserError
from stormvl.synth import FAMILIES, generate, regenerate, scene
from stormvl.synth.base import LEVELS

FAMS = list(FAMILIES)


def test_registry_has_the_issue_families():
    need = {"shell_game", "occluded_trajectory", "collision", "counterfactual", "event_order",
            "event_count", "direction", "rotation", "speed", "state_change", "containment",
            "map_building"}
    assert need <= set(FAMILIES)
    for fam in FAMILIES.values():
        assert fam.description and "\n" not in fam.description and fam.probe
        assert {"easy", "medium", "hard", "ood"} <= set(fam.levels) <= {"easy", "medium", "hard", "ood", "intro"}


@pytest.mark.parametrize("family", FAMS)
@pytest.mark.parametrize("split,difficulty", [("train", "easy"), ("val", "medium"), ("test", "hard"), ("ood", "mixed")])
def test_item_is_complete_and_regenerates(family, split, difficulty):
    it = generate(family, 3, seed=5, split=split, difficulty=difficulty, frames=8, size=32)
    assert it.video.shape == it.thought.shape == (8, 32, 32, 3)
    assert it.video.dtype == it.thought.dtype == np.uint8
    assert len(it.options) == 4 and len(set(it.options)) == 4
    assert it.answer in LETTERS[:4] and it.question.endswith("?") and it.rationale
    assert len(it.state) == 8 and all("probe" in s for s in it.state)
    json.dumps(it.state), json.dumps(it.meta)  # manifest-ready
    assert it.meta["synth"]["family"] == family and it.meta["synth"]["split"] == split
    sample = Sample(id="x", video="v.mp4", question=it.question, options=it.options,
                    answer=it.answer, meta=json.loads(json.dumps(it.meta)))
    again = regenerate(sample)
    assert np.array_equal(again.video, it.video) and np.array_equal(again.thought, it.thought)
    assert again.options == it.options and again.answer == it.answer and again.state == it.state


@pytest.mark.parametrize("family", FAMS)
def test_items_differ_by_index_and_seed(family):
    a = generate(family, 0, seed=0, frames=8, size=32)
    b = generate(family, 1, seed=0, frames=8, size=32)
    c = generate(family, 0, seed=1, frames=8, size=32)
    assert not np.array_equal(a.video, b.video)
    assert not np.array_equal(a.video, c.video)


@pytest.mark.parametrize("family", FAMS)
def test_letters_balanced_per_family(family):
    # The letter schedule is exactly balanced over every block of 4 indices.
    for level in ("easy", "hard"):
        got = Counter(generate(family, i, seed=2, split="train", difficulty=level, frames=8, size=32).answer
                      for i in range(40))
        assert got == {letter: 10 for letter in "ABCD"}, got


@pytest.mark.parametrize("family", FAMS)
def test_answer_texts_spread(family):
    # No single correct option text dominates (a text prior would show here first).
    texts = Counter()
    for i in range(48):
        it = generate(family, i, seed=3, difficulty="easy", frames=16, size=32)
        texts[it.options[LETTERS.index(it.answer)]] += 1
    assert texts.most_common(1)[0][1] <= 48 * 0.5, texts


@pytest.mark.parametrize("family", FAMS)
def test_thought_differs_where_state_is_hidden(family):
    for i in range(4):
        for level in LEVELS:
            it = generate(family, i, seed=0, difficulty=level, frames=16, size=64)
            differ = (it.video != it.thought).any(axis=(1, 2, 3))  # (T,)
            # what must be imagined shows up in the thought video for most of the clip
            assert differ.sum() >= 4, (family, level, differ)
            hidden = [s.get("hidden") or (s.get("visible") is False) for s in it.state]
            assert all(d for d, h in zip(differ, hidden, strict=True) if h)


def test_shell_game_ball_shows_only_while_the_cups_are_raised():
    # the input video shows the ball only before the cups come down (else the last frame answers)
    red = np.array(scene.PALETTE["red"])
    for size in (32, 48, 64):
        for level in LEVELS:
            for split in ("train", "ood"):
                it = generate("shell_game", 1, seed=5, split=split, difficulty=level, frames=16, size=size)
                shown = (np.abs(it.video.astype(int) - red).sum(-1) < 60).any(axis=(1, 2))  # (T,)
                assert shown.tolist() == [s["visible"] for s in it.state], (size, level, split)


@pytest.mark.parametrize("family", FAMS)
def test_ood_ranges_disjoint(family):
    fam = FAMILIES[family]
    ood = fam.levels["ood"]
    assert ood, "every family holds out at least one knob range"
    for knob, (lo, hi) in ood.items():
        seen = [lv for lv in fam.levels if lv != "ood"]  # intro included
        seen_lo = min(fam.levels[lv][knob][0] for lv in seen)
        seen_hi = max(fam.levels[lv][knob][1] for lv in seen)
        assert hi < seen_lo or lo > seen_hi, (knob, (lo, hi), (seen_lo, seen_hi))
    for i in range(6):
        for split in ("train", "ood"):
            params = generate(family, i, split=split, difficulty="mixed", frames=16, size=32).meta["synth"]["params"]
            for knob, (lo, hi) in ood.items():
                inside = lo <= params[knob] <= hi
                assert inside == (split == "ood"), (split, knob, params[knob])


def test_bad_generate_arguments():
    with pytest.raises(UserError, match="unknown family"):
        generate("nope", 0)
    with pytest.raises(UserError, match="too few"):
        generate("shell_game", 0, frames=4)
    with pytest.raises(UserError, match="even"):
        generate("shell_game", 0, size=33)
    with pytest.raises(UserError, match="split"):
        generate("shell_game", 0, split="dev")


def test_regenerate_refuses_other_generator_versions():
    it = generate("speed", 0, frames=8, size=32)
    meta = json.loads(json.dumps(it.meta))
    meta["synth"]["version"] = 999
    s = Sample(id="x", video="v.mp4", question="q?", options=["a", "b"], answer="A", meta=meta)
    with pytest.raises(UserError, match="version 999"):
        regenerate(s)
    with pytest.raises(UserError, match="no meta"):
        regenerate(Sample(id="y", video="v.mp4", question="q?", options=["a", "b"], answer="A"))


@pytest.mark.parametrize("family", ["shell_game", "containment", "event_count", "state_change", "map_building"])
def test_last_probe_matches_the_answer(family):
    from stormvl.synth.families.map_building import QUADS
    from stormvl.synth.families.shell_game import slot_name
    from stormvl.synth.scene import COLOR_NAMES

    for i in range(8):
        it = generate(family, i, seed=4, difficulty="mixed", frames=16, size=48)
        right = it.options[LETTERS.index(it.answer)]
        last = it.state[-1]["probe"]
        if family == "shell_game":
            assert right == slot_name(last)
        elif family == "containment":
            assert right.split()[1] == it.rationale.split("ends in the ")[1].split()[0]
            assert last >= 0
        elif family == "event_count":
            assert int(right) == last
        elif family == "state_change":
            assert right == COLOR_NAMES[last]
        else:
            assert right == f"{QUADS[last]} it"


def test_intro_share_draws_the_foothold_level():
    """shell_game's intro level has no swap, so the ball ends where it was shown; families
    without an intro level fall back to easy; the share is honoured and 0 changes nothing."""
    n = 400
    levels = [generate("shell_game", i, split="train", difficulty="hard", frames=8, size=32,
                       intro=0.25).meta["synth"] for i in range(n)]
    intro = [m for m in levels if m["level"] == "intro"]
    assert 0.18 < len(intro) / n < 0.32
    assert all(m["params"]["swaps"] == 0 for m in intro)
    assert all(m["level"] == "hard" for m in levels if m["level"] != "intro")
    it = generate("shell_game", next(i for i, m in enumerate(levels) if m["level"] == "intro"),
                  split="train", difficulty="hard", frames=8, size=32, intro=0.25)
    assert it.state[0]["probe"] == it.state[-1]["probe"]
    assert {generate("speed", i, difficulty="hard", intro=1.0, frames=8, size=32).meta["synth"]["level"]
            for i in range(4)} == {"easy"}
    plain = generate("shell_game", 7, difficulty="mixed", frames=8, size=32)
    same = generate("shell_game", 7, difficulty="mixed", frames=8, size=32, intro=0.0)
    assert plain.options == same.options and (plain.video == same.video).all()


@pytest.mark.parametrize("family", FAMS)
def test_canonical_order_keeps_the_item_and_orders_its_options(family):
    from stormvl.synth.families.shell_game import slot_name

    for i in range(6):
        a = generate(family, i, difficulty="mixed", frames=8, size=32)
        b = generate(family, i, difficulty="mixed", frames=8, size=32, option_order="canonical")
        assert (a.video == b.video).all() and sorted(a.options) == sorted(b.options)
        assert a.options[LETTERS.index(a.answer)] == b.options[LETTERS.index(b.answer)]
        if family == "shell_game":  # cups left to right: a letter names a position
            slots = [next(k for k in range(6) if slot_name(k) == t) for t in b.options]
            assert slots == sorted(slots)
        elif family not in ("containment", "occluded_trajectory"):  # those: by place (below)
            assert b.options == sorted(b.options)
        assert regenerate_options(b) == b.options


@pytest.mark.parametrize("family", ["containment", "occluded_trajectory"])
def test_canonical_letter_is_the_answers_place(family):
    # boxes left to right, gates top to bottom: with four of them a letter always names the
    # same place, which the last frame's probe (the box holding the gem, the ball's quarter)
    # gives independently of the option texts
    for i in range(8):
        it = generate(family, i, difficulty="easy", frames=8, size=32, option_order="canonical")
        assert LETTERS.index(it.answer) == it.state[-1]["probe"]


def regenerate_options(item):
    s = Sample(id="x", video="v.mp4", question=item.question, options=item.options,
               answer=item.answer, meta=json.loads(json.dumps(item.meta)))
    return regenerate(s).options


def test_bad_intro_and_option_order():
    with pytest.raises(UserError, match="--intro"):
        generate("shell_game", 0, intro=-0.1)
    with pytest.raises(UserError, match="--option-order"):
        generate("shell_game", 0, option_order="alphabetical")
