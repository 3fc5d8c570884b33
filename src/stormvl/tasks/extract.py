"""Answer extraction: each benchmark's own rule scorer, re-implemented from its published rules.

Scores are only comparable with published numbers when a reply is read the way the standard
harness reads it, quirks included, so each rule below follows one reference (see
docs/benchmarks.md for the exact versions):

* ``priority_letter`` - lmms-eval 0.7.3 ``_task_utils/mcq_extract.py`` (used by VideoMME):
  candidate letters in several formats, the highest-priority format wins, ties go to the
  later position. Upper-case letters only, so a lone "b" or the article "a" is not a letter.
* ``mvbench_letter`` - lmms-eval 0.7.3 ``mvbench/utils.py`` ``mcq_acc``: "X. text" gives X,
  otherwise punctuation is normalised, the text lower-cased, and the first stand-alone a-e
  word is the letter (so the article "a" reads as A, as in the harness).
* ``tempcompass_*`` - the official TempCompass rule-only mode (``--disable_llm``), with
  lmms-eval's caption-matching variant; an unmatched reply is ``None`` (the judge's turn, or
  wrong without a judge).
* ``mmvu_mc_correct`` - lmms-eval 0.7.3 ``mmvu/utils.py`` rule scorer for multiple choice.

All functions are pure: text in, decision out.
"""

from __future__ import annotations

import re
import string

# ----------------------------------------------------------------------------------------
# Priority letter rule (lmms-eval mcq_extract; VideoMME, synth)

# Higher wins; the same ranking the harness uses.
_PRIORITY = {
    "start": 10,
    "end": 9,
    "phrase": 7,
    "parentheses": 6,
    "period": 5,
    "colon": 4,
    "right_paren": 3,
    "space": 2,
    "fallback": 0,
}

# Declarations after which the next option letter is taken as the answer.
_ANSWER_PHRASES = (
    "the answer is",
    "answer is",
    "the correct answer is",
    "correct answer is",
    "the best answer is",
    "best answer is",
    "the correct option is",
    "correct option is",
    "the best option is",
    "best option is",
    "the choice is",
    "choice is",
    "the correct choice is",
    "correct choice is",
    "i choose",
    "i select",
    "i pick",
    "my answer is",
    "my choice is",
    "옵션",
    "정답은",
    "답은",
    "답:",
    "答案是",
    "答案为",
    "选",
    "答えは",
)


def priority_letter(response: str, letters: str = "ABCD") -> str:
    """The option letter a reply picks, by lmms-eval's priority rules; "" if none.

    Formats, best first: the reply starts with a stand-alone letter; ends with one; a letter
    after an answer phrase ("the answer is"); "(X)"; "X."; "X:"; "X)"; "X "; and, only when
    nothing else matched, any occurrence of an option letter anywhere. Within one format the
    later occurrence wins (a reasoning reply states its answer last).

    Args:
        response: raw model reply.
        letters: the valid option letters, upper case.
    """
    if not response or not response.strip():
        return ""
    text = response.strip()
    for ch in ",.!?;:'\"":  # one character class at a time, as the harness does
        text = text.strip(ch)
    text = f" {text} "
    found: list[tuple[int, int, str]] = []  # (priority, position, letter)

    def add(kind: str, pos: int, letter: str) -> None:
        found.append((_PRIORITY[kind], pos, letter))

    for ch in letters:
        for kind, pattern in (
            ("parentheses", f"({ch})"),
            ("period", f"{ch}."),
            ("colon", f"{ch}:"),
            ("right_paren", f"{ch})"),
            ("space", f"{ch} "),
        ):
            if pattern in text:
                add(kind, text.rfind(pattern), ch)
    lower = text.lower()
    for phrase in _ANSWER_PHRASES:
        at = lower.find(phrase)
        if at < 0:
            continue
        for ch in letters:
            pos = text.find(ch, at + len(phrase))
            if pos >= 0:
                add("phrase", pos, ch)
    core = text.strip()
    for ch in letters:
        if core.startswith(ch) and (len(core) == 1 or not core[1].isalpha()):
            add("start", 0, ch)
        if core.endswith(ch) and (len(core) == 1 or not core[-2].isalpha()):
            add("end", len(text) - 1, ch)
    if not found:
        for ch in letters:
            if ch in text:
                add("fallback", text.rfind(ch), ch)
    if not found:
        return ""
    return max(found)[2]


# ----------------------------------------------------------------------------------------
# MVBench (lmms-eval mcq_acc)

_MV_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
             "@", "`", ",", "?", "!")
_MV_COMMA_NUM = re.compile(r"(\d)(,)(\d)")
# The harness's period rule: a "." not followed by a digit is dropped. Its call passes
# re.UNICODE (= 32) in the count slot, so at most 32 periods go; kept for equal scores.
_MV_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_MV_OPTION = re.compile(r"^([A-E])\.\s*(.+)$", re.IGNORECASE)
_MV_LETTER = re.compile(r"\b([A-E])\b", re.IGNORECASE)


def _mv_punctuation(text: str) -> str:
    out = text
    for p in _MV_PUNCT:
        spaced = (p + " " in text) or (" " + p in text) or _MV_COMMA_NUM.search(text)
        out = out.replace(p, "" if spaced else " ")
    return _MV_PERIOD.sub("", out, count=32)


def mvbench_letter(text: str) -> str:
    """Normalise a reply (or the gold letter) the way MVBench's harness compares them.

    Returns the upper-case letter A-E when one is found, else the normalised lower-case
    text (which then only equals a gold letter by accident, i.e. never).
    """
    m = _MV_OPTION.match(text.strip())
    if m:
        return m.group(1).upper()
    t = text.replace("\n", " ").replace("\t", " ").strip()
    t = _mv_punctuation(t)
    t = t.strip("'").strip('"').strip(")").strip("(").strip().lower()
    m = _MV_LETTER.search(t)
    return m.group(1).upper() if m else t


def mvbench_correct(response: str, gold_letter: str) -> bool:
    return mvbench_letter(response) == mvbench_letter(gold_letter)


# ----------------------------------------------------------------------------------------
# TempCompass (official rule-only mode)

def _tc_clean(response: str) -> str:
    return response.replace("</s>", "")


def tempcompass_multi_choice(response: str, answer: str) -> int | None:
    """1 / 0 when a rule decides, ``None`` when no rule matches (judge's turn).

    ``answer`` is the full gold option, e.g. "B. clockwise". Rules: the reply equals it; is a
    bare letter A-D; starts with "X." or "X)".
    """
    pred = _tc_clean(response)
    if pred == answer:
        return 1
    if pred in ("A", "B", "C", "D"):
        return int(pred == answer[:1])
    if pred[:2] in ("A.", "B.", "C.", "D."):
        return int(pred.split(".")[0] == answer[:1])
    if pred[:2] in ("A)", "B)", "C)", "D)"):
        return int(pred.split(")")[0] == answer[:1])
    return None


def tempcompass_yes_no_pred(response: str) -> str | None:
    """"yes" / "no" when the lower-cased reply starts with it (so "Nothing" reads as no)."""
    pred = _tc_clean(response).lower()
    if pred.startswith("yes"):
        return "yes"
    if pred.startswith("no"):
        return "no"
    return None


def tempcompass_yes_no(response: str, answer: str) -> int | None:
    pred = tempcompass_yes_no_pred(response)
    return None if pred is None else int(pred == answer)


def tempcompass_caption_matching(response: str, question: str, answer: str) -> int | None:
    """Rule scorer for caption matching; ``None`` when the reply matches no option form.

    The options are the question's lines after the first, "Sentence A: text" (or "Caption
    A:", "Option 1:"). A reply matches an option when it equals the whole line, its text
    (also after a leading "(x) "), or its label with or without the word and the period.
    """
    pred = _tc_clean(response)
    lines = question.split("\n")[1:]
    pairs = [line.split(": ")[:2] for line in lines if ": " in line]
    labels = [p[0] for p in pairs]
    short = [lab.replace("Sentence ", "").replace("Option ", "").replace("Caption ", "")
             for lab in labels]
    picked: str | None = None
    for line in lines:
        if line == pred:
            picked = line
    for _, sent in pairs:
        if sent == pred or (") " in pred and sent == pred.split(") ")[1]):
            picked = sent
    for lab in labels + short:
        if lab == pred or lab == pred.replace(".", ""):
            picked = lab
    if picked is None:
        return None
    parts = answer.split(": ")
    head_words = parts[0].split()
    accepted = {answer, answer.split(":")[0]}
    if len(parts) > 1:
        accepted.add(parts[1])
    if len(head_words) > 1:
        accepted.add(head_words[1])
    return int(picked in accepted)


# ----------------------------------------------------------------------------------------
# MMVU (lmms-eval rule scorer, multiple choice)

def mmvu_mc_correct(response: str, answer: str, choices: dict[str, str]) -> bool:
    """lmms-eval's MMVU multiple-choice rule: lenient by design (documented there).

    Correct when the first stand-alone a-e word is the gold letter; or the gold letter appears
    stand-alone anywhere; or the gold option's text appears in the reply; or the gold letter
    appears and any word (> 2 chars) of its option text appears too.
    """
    pred = response.strip()
    gold = answer.strip()
    m = re.search(r"\b([A-E])\b", pred, re.IGNORECASE)
    if m and m.group(1).upper() == gold.upper():
        return True
    if gold.upper() in pred.upper() and re.search(rf"\b{re.escape(gold)}\b", pred, re.IGNORECASE):
        return True
    if gold in choices:
        text = choices[gold].strip().lower()
        low = pred.lower()
        if text and text in low:
            return True
        if gold.upper() in pred.upper():
            words = [w.strip(string.punctuation) for w in text.split()]
            words = [w for w in words if len(w) > 2]
            if any(w in low for w in words):
                return True
    return False
