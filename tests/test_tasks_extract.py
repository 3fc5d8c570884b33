"""Table-driven tests of every benchmark's answer rule, awkward replies included.

Expected values were worked out by hand from each rule and cross-checked against the
reference implementations (lmms-eval 0.7.3 task utils, official TempCompass scorers).
"""

import pytest

from stormvl.tasks import extract
from stormvl.tasks.extract import (
    mmvu_mc_correct,
    mvbench_letter,
    priority_letter,
    tempcompass_caption_matching,
    tempcompass_multi_choice,
    tempcompass_yes_no,
)

# (reply, letter lmms-eval's priority rule reads)
PRIORITY = [
    ("A", "A"),
    ("The answer is (B).", "B"),  # phrase rule
    ("b", ""),  # lower case is never a letter here
    ("B. The ball", "B"),  # starts with a stand-alone letter
    ("", ""),
    ("   ", ""),
    ("the ball ends up under the cup that was moved last in the whole long sequence", ""),
    ("a ball is under it", ""),  # the article "a"
    ("Because the ball moved twice", "B"),  # no format matched: fallback to any letter
    ("The best answer is C", "C"),  # ends with a letter
    ("(C) blue", "C"),
    ("Answer: D", "D"),
    ("A or B", "A"),  # start (10) beats end (9)
    ("I choose C because D is wrong", "D"),  # same format: the later position wins
    ("Option C.", "C"),
    ("D", "D"),
]


@pytest.mark.parametrize("reply,want", PRIORITY)
def test_priority_letter(reply, want):
    assert priority_letter(reply) == want


def test_priority_letter_respects_option_count():
    assert priority_letter("E", "ABCD") == ""
    assert priority_letter("E", "ABCDE") == "E"


# (reply, what MVBench's normaliser yields; a letter or the normalised text)
MVBENCH = [
    ("(B) right", "B"),
    ("b", "B"),  # case-insensitive here, unlike VideoMME
    ("B. The ball", "B"),
    ("", ""),
    ("The answer is a cat", "A"),  # the article "a" is read as A (harness behaviour)
    ("the ball is under the left cup", "the ball is under the left cup"),
    ("Best option: (C)", "C"),
    ("The answer is (B).", "B"),
    ("c.", "C"),
]


@pytest.mark.parametrize("reply,want", MVBENCH)
def test_mvbench_letter(reply, want):
    assert mvbench_letter(reply) == want


def test_mvbench_long_reply_without_letter_is_wrong():
    assert not extract.mvbench_correct("the ball is under the left cup", "B")
    assert extract.mvbench_correct("(B) right", "B")
    assert not extract.mvbench_correct("", "A")


# TempCompass multi-choice, gold "B. sleeping": 1 / 0 / None (no rule matched)
TC_MC = [
    ("B", 1),
    ("A", 0),
    ("B. sleeping", 1),
    ("B) sleeping", 1),
    ("C. eating", 0),
    ("b", None),
    ("The answer is (B).", None),
    ("", None),
    ("sleeping", None),
    ("B</s>", 1),
]


@pytest.mark.parametrize("reply,want", TC_MC)
def test_tempcompass_multi_choice(reply, want):
    assert tempcompass_multi_choice(reply, "B. sleeping") == want


TC_YN = [
    ("Yes, it is.", 1),
    ("no", 0),
    ("Nothing happens", 0),  # starts with "no": read as no, as the official rule does
    ("It is yes", None),
    ("", None),
    ("YES", 1),
]


@pytest.mark.parametrize("reply,want", TC_YN)
def test_tempcompass_yes_no(reply, want):
    assert tempcompass_yes_no(reply, "yes") == want


CM_Q = "Which caption matches?\nSentence A: the car moves left\nSentence B: the car moves right"
TC_CM = [
    ("Sentence B", 1),
    ("B", 1),
    ("B.", 1),
    ("the car moves right", 1),
    ("Sentence A: the car moves left", 0),
    ("(A) the car moves left", 0),
    ("Sentence B: the car moves right", 1),
    ("I think B", None),
    ("", None),
]


@pytest.mark.parametrize("reply,want", TC_CM)
def test_tempcompass_caption_matching(reply, want):
    assert tempcompass_caption_matching(reply, CM_Q, "Sentence B: the car moves right") == want


CHOICES = {"A": "Isothermal compression", "B": "Adiabatic compression",
           "C": "Isobaric compression", "D": "Adiabatic expansion", "E": "Free expansion"}
MMVU = [
    ("B", True),
    ("(B)", True),
    ("b", True),
    ("A", False),
    ("It is a tricky one: B", True),  # gold letter anywhere stand-alone
    ("Adiabatic compression", True),  # gold option text
    ("", False),
    ("The answer is a", False),  # the article reads as A
    ("Isothermal compression", False),
]


@pytest.mark.parametrize("reply,want", MMVU)
def test_mmvu_mc(reply, want):
    assert mmvu_mc_correct(reply, "B", CHOICES) is want
