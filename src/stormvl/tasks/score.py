"""Score raw replies: one verdict per item, accuracy x100 overall and per category.

Accounting rules (the same for every benchmark):

* a prediction whose id is not in the benchmark is reported (``unknown``) and ignored;
* a repeated id is reported (``duplicates``); its first reply is the one scored;
* an item with no prediction is reported (``missing``) and counts as wrong;
* a reply no rule can read (for letter answers: no option letter in it, ``""`` included)
  counts as wrong (``unmatched``) unless a judge is configured, in which case the judge
  decides (as the official scorers fall back to an LLM);
* formats that only a judge can score (TempCompass captioning, open-ended questions: MMVU's
  and a suite manifest's rows without options) are ``not_scored`` without one - left out of
  the accuracy, never guessed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from stormvl.data.manifest import LETTERS, iter_jsonl
from stormvl.errors import UserError
from stormvl.io import write_json_atomic
from stormvl.tasks import extract
from stormvl.tasks.base import EvalItem


class Judge(Protocol):
    """What scoring needs from an LLM judge (``stormvl.tasks.judge.Judge``)."""

    def binary(self, question: str, answer: str, prediction: str) -> bool: ...

    def caption_choice(self, caption: str, mc_question: str) -> str: ...


@dataclass
class Verdict:
    correct: bool | None  # None: not scored
    extracted: str  # what the rule read from the reply ("" when nothing)
    method: str  # rule | judge | unmatched | missing | not_scored


@dataclass
class Predictions:
    responses: dict[str, str]
    duplicates: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------
# Reading predictions


def read_predictions(path: str | Path) -> Predictions:
    """Read ``{"id": ..., "response": "..."}`` lines; errors name the file, line and field.

    Raises:
        UserError: missing file, invalid JSON, a row without a usable ``id`` / ``response``,
            or no rows at all.
    """
    out = Predictions({})
    for where, row in iter_jsonl(path, "predictions file", UserError):
        if not isinstance(row, dict):
            raise UserError(f"{where}: a row must be a JSON object")
        if "id" not in row:
            raise UserError(f"{where}: missing field 'id'")
        pid = row["id"]
        if isinstance(pid, bool) or not isinstance(pid, (str, int)) or str(pid) == "":
            raise UserError(f"{where}: field 'id' must be a non-empty string or integer")
        if "response" not in row:
            raise UserError(f"{where}: missing field 'response'")
        if not isinstance(row["response"], str):
            raise UserError(f"{where}: field 'response' must be a string")
        key = str(pid)
        if key in out.responses:
            out.duplicates.append(key)
            continue
        out.responses[key] = row["response"]
    if not out.responses:
        raise UserError(f"{path}: no predictions in the file")
    return out


# ----------------------------------------------------------------------------------------
# One item


def verdict(item: EvalItem, response: str | None, judge: Judge | None = None) -> Verdict:
    """Apply the item's benchmark rule to one reply (None = no prediction)."""
    judged_only = item.format in ("captioning", "open_ended")
    if judged_only and judge is None:
        return Verdict(None, "", "not_scored")
    if response is None:
        return Verdict(False, "", "missing")
    if judged_only:
        return _judged(item, response, judge)
    rule = _RULES.get((item.benchmark, item.format))
    if rule is None:
        raise ValueError(f"no scoring rule for {item.benchmark}/{item.format}")
    decided, extracted = rule(item, response)
    if decided is not None:
        return Verdict(bool(decided), extracted, "rule")
    if judge is not None:
        return Verdict(judge.binary(*_judge_question(item), response), extracted, "judge")
    return Verdict(False, extracted, "unmatched")


def _judge_question(item: EvalItem) -> tuple[str, str]:
    """(question, gold) as the judge is shown them: a bare gold letter ("B") says nothing
    without its options, so lettered options and the gold option's text come with it."""
    letters = _letters(item)
    if not (item.options and len(item.answer) == 1 and item.answer in letters):
        return item.question, item.answer  # the gold is already text (TempCompass lines)
    lines = "\n".join(f"{letters[k]}. {o}" for k, o in enumerate(item.options))
    gold = f"{item.answer}. {item.options[letters.index(item.answer)]}"
    return f"{item.question}\n{lines}", gold


def _letters(item: EvalItem) -> str:
    return LETTERS[: max(len(item.options), 1)]


# A reply with no readable letter is undecided (None): unmatched, so a configured judge
# sees it; without one it is wrong, as in the harness.

def _videomme(item: EvalItem, reply: str):
    got = extract.priority_letter(reply, "ABCD")
    return (got.lower() == item.answer.lower()) if got else None, got


def _synth(item: EvalItem, reply: str):
    got = extract.priority_letter(reply, _letters(item))
    return (got == item.answer) if got else None, got


def _mvbench(item: EvalItem, reply: str):
    got = extract.mvbench_letter(reply)  # a letter A-E, else the normalised text
    if not (len(got) == 1 and got in "ABCDE"):
        return None, got
    return got == extract.mvbench_letter(item.answer), got


def _tc_mc(item: EvalItem, reply: str):
    decided = extract.tempcompass_multi_choice(reply, item.answer)
    return decided, reply[:1] if decided is not None else ""


def _tc_yes_no(item: EvalItem, reply: str):
    return extract.tempcompass_yes_no(reply, item.answer), extract.tempcompass_yes_no_pred(
        reply) or ""


def _tc_caption(item: EvalItem, reply: str):
    return extract.tempcompass_caption_matching(reply, item.question, item.answer), ""


def _mmvu_mc(item: EvalItem, reply: str):
    choices = item.meta.get("choices", {})
    return extract.mmvu_mc_correct(reply, item.answer, choices), ""


_RULES = {
    ("videomme", "mc"): _videomme,
    ("synth", "mc"): _synth,
    ("mvbench", "mc"): _mvbench,
    ("tempcompass", "mc"): _tc_mc,
    ("tempcompass", "yes_no"): _tc_yes_no,
    ("tempcompass", "caption_matching"): _tc_caption,
    ("mmvu", "mc"): _mmvu_mc,
}


def _judged(item: EvalItem, reply: str, judge: Judge) -> Verdict:
    if item.format == "captioning":
        # TempCompass: the judge answers the paired multi-choice question from the caption.
        mc_answer = str(item.meta["mc_answer"])
        said = judge.caption_choice(reply, str(item.meta["mc_question"]))
        picks = sum(said.count(f"{c}.") for c in "ABCD")
        ok = picks == 1 and said.split(". ")[0] == mc_answer.split(". ")[0]
        return Verdict(ok, said[:1], "judge")
    return Verdict(judge.binary(item.question, item.answer, reply), "", "judge")


# ----------------------------------------------------------------------------------------
# A whole benchmark


def score(
    benchmark: str,
    items: Sequence[EvalItem],
    preds: Predictions,
    breakdown_keys: Sequence[str],
    judge: Judge | None = None,
) -> dict:
    """Score every item; returns the results dict written to results.json.

    Raises:
        UserError: no prediction id matches the benchmark (wrong file or benchmark).
    """
    known = {it.id for it in items}
    unknown = [pid for pid in preds.responses if pid not in known]
    if unknown and len(unknown) == len(preds.responses):
        raise UserError(f"none of the {len(unknown)} prediction ids belong to {benchmark} "
                        f"(first: {unknown[:3]}); check --benchmark and the id format")
    rows = []
    for it in items:
        v = verdict(it, preds.responses.get(it.id), judge)
        rows.append({"id": it.id, "format": it.format, **asdict(v), **it.categories})
    scored = [r for r in rows if r["correct"] is not None]
    n_ok = sum(bool(r["correct"]) for r in scored)
    result = {
        "benchmark": benchmark,
        "overall": _pct(n_ok, len(scored)),
        "n_items": len(rows),
        "n_scored": len(scored),
        "n_correct": n_ok,
        "missing": sum(r["method"] == "missing" for r in rows),
        "unmatched": sum(r["method"] == "unmatched" for r in rows),
        "judged": sum(r["method"] == "judge" for r in rows),
        "not_scored": _count_by(r["format"] for r in rows if r["correct"] is None),
        "unknown": len(unknown),
        "duplicates": len(preds.duplicates),
        "missing_ids": [r["id"] for r in rows if r["method"] == "missing"][:50],
        "unknown_ids": unknown[:50],
        "duplicate_ids": preds.duplicates[:50],
        "breakdowns": {k: _breakdown(scored, k) for k in breakdown_keys},
        "items": rows,
    }
    return result


def _pct(k: int, n: int) -> float | None:
    return round(100.0 * k / n, 2) if n else None


def _count_by(values) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for v in values:
        out[v] += 1
    return dict(out)


def _breakdown(rows: list[dict], key: str) -> dict[str, dict]:
    groups: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        if key in r and r[key] is not None:
            groups[str(r[key])].append(bool(r["correct"]))
    return {g: {"accuracy": _pct(sum(v), len(v)), "correct": sum(v), "n": len(v)}
            for g, v in sorted(groups.items())}


# ----------------------------------------------------------------------------------------
# Rendering


def _fmt(acc: float | None) -> str:
    return "  n/a" if acc is None else f"{acc:5.1f}"


def render_table(result: dict) -> str:
    """A plain-text report: overall, the accounting counts, then each breakdown."""
    lines = [
        f"{result['benchmark']}: overall {_fmt(result['overall'])}  "
        f"({result['n_correct']}/{result['n_scored']} scored, {result['n_items']} items)",
        f"missing {result['missing']} (counted wrong)  unmatched {result['unmatched']}  "
        f"judged {result['judged']}  unknown ids {result['unknown']}  "
        f"duplicate ids {result['duplicates']}",
    ]
    if result["not_scored"]:
        parts = ", ".join(f"{k} {v}" for k, v in sorted(result["not_scored"].items()))
        lines.append(f"not scored (needs --judge-url): {parts}")
    for key, groups in result["breakdowns"].items():
        if not groups:
            continue
        width = max(len(key), *(len(g) for g in groups))
        lines.append("")
        lines.append(f"{key:<{width}}  {'acc':>5}  {'n':>5}")
        for g, s in groups.items():
            lines.append(f"{g:<{width}}  {_fmt(s['accuracy'])}  {s['n']:>5}")
    return "\n".join(lines)


def write_results(path: str | Path, result: dict) -> None:
    """Write results JSON atomically (temp file + rename): never a half-written file."""
    write_json_atomic(path, result)
