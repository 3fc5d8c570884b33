"""Parity of our answer rules with lmms-eval's own task code, on fuzzed replies.

Runs only where an lmms-eval source tree is available (never installed in CI):
``STORMVL_LMMS_EVAL_SRC=/path/to/lmms_eval`` (e.g. the unzipped lmms_eval-0.7.3 wheel).
The reference functions are loaded from those files with light stubs for their logging
imports; nothing from lmms-eval is copied into stormvl.
"""

import importlib.util
import os
import random
import re
import string
import sys
import types
from pathlib import Path

import pytest

from stormvl.tasks import extract

SRC = os.environ.get("STORMVL_LMMS_EVAL_SRC")
pytestmark = pytest.mark.skipif(not SRC, reason="set STORMVL_LMMS_EVAL_SRC to run")

CHOICES = {"A": "Isothermal compression", "B": "Adiabatic compression",
           "C": "Isobaric compression", "D": "Adiabatic expansion", "E": "Free expansion"}
CM_Q = "Which caption matches?\nSentence A: the car moves left\nSentence B: the car moves right"
WORDS = ["The", "answer", "is", "A", "B", "(C)", "D.", "a", "b", "option", "Because", "I choose",
         "best", "E", "(", ")", ":", "Sentence", "yes", "no", "1,000", "3.5", "-", "/", "[B]",
         "c)", "Sentence B", "the car moves right", "B)", "B.", "adiabatic", "compression"]


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def ref():
    root = Path(SRC) / "tasks"
    if "loguru" not in sys.modules:
        stub = types.ModuleType("loguru")
        stub.logger = types.SimpleNamespace(info=print, error=print, warning=print)
        sys.modules["loguru"] = stub
    os.environ.setdefault("HF_HOME", "/tmp")
    mmvu_src = (root / "mmvu" / "utils.py").read_text()
    a, b = mmvu_src.index("def normalize_math_notation"), mmvu_src.index(
        "def evaluate_with_llm_judge")
    ns = {"re": re, "string": string, "Dict": dict, "Any": object}
    exec(mmvu_src[a:b], ns)  # the rule scorer only; its judge imports are not needed
    return types.SimpleNamespace(
        mcq=_load("ref_mcq", root / "_task_utils" / "mcq_extract.py"),
        mv=_load("ref_mv", root / "mvbench" / "utils.py"),
        tc=_load("ref_tc", root / "tempcompass" / "utils.py"),
        mmvu=ns["evaluate_with_rule_based"],
    )


def _replies(n=3000, seed=0):
    rng = random.Random(seed)
    chars = "ABCDEabcde ().:,;!?'\"-/\n"
    for _ in range(n):
        if rng.random() < 0.3:
            yield "".join(rng.choice(chars) for _ in range(rng.randint(0, 12)))
        else:
            yield " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 8)))


def test_rules_match_lmms_eval(ref):
    for r in _replies():
        assert extract.priority_letter(r) == ref.mcq.extract_mcq_answer(r, list("ABCD")), r
        for g in "ABCD":
            assert extract.mvbench_correct(r, g) == bool(ref.mv.mcq_acc(g, r)), (r, g)
            doc = {"answer": g, "question_type": "multiple-choice", "choices": CHOICES}
            assert extract.mmvu_mc_correct(r, g, CHOICES) == ref.mmvu(doc, r), (r, g)
        want = ref.tc.eval_rule(r, CM_Q, "Sentence B: the car moves right")
        got = extract.tempcompass_caption_matching(r, CM_Q, "Sentence B: the car moves right")
        assert got == (None if want == "fail" else want), r
        assert extract.tempcompass_yes_no_pred(r) == (ref.tc.extract_pred(r) or None), r


def test_verdicts_without_judge_match_lmms_eval(ref):
    """Unreadable replies are ``unmatched`` (a judge's turn) yet, with no judge, score exactly
    as lmms-eval scores them: wrong."""
    from stormvl.tasks.base import EvalItem
    from stormvl.tasks.score import verdict

    opts = ["red", "green", "blue", "yellow"]
    for r in _replies(1000, seed=1):
        for g in "ABCD":
            vm = EvalItem("q", "videomme", Path("v.mp4"), "", g, options=opts)
            want = ref.mcq.extract_mcq_answer(r, list("ABCD")).lower() == g.lower()
            assert verdict(vm, r).correct == want, (r, g)
            mv = EvalItem("q", "mvbench", Path("v.mp4"), "", g, options=opts)
            assert verdict(mv, r).correct == bool(ref.mv.mcq_acc(g, r)), (r, g)
