"""Manifest schema 2: open-ended rows (no options, the answer as text); version 1 unchanged."""

import json

import pytest

from stormvl.data.manifest import Sample, read_manifest, write_manifest
from stormvl.errors import ManifestError

MC = {"id": "a", "video": "v/a.mp4", "question": "q?", "options": ["x", "y", "z"], "answer": "B"}
OPEN = {"schema": 2, "id": "o", "video": "v/o.mp4", "question": "What is she doing?",
        "answer": "She is cooking."}


def _write(tmp_path, rows):
    p = tmp_path / "m.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_open_ended_rows_read_and_round_trip(tmp_path):
    rows = [MC, OPEN, {**OPEN, "id": "o2", "options": [], "rationale": "Pan on the stove."},
            {**MC, "id": "b", "schema": 2}]
    mc, free, free2, mc2 = read_manifest(_write(tmp_path, rows))
    assert (free.options, free.answer, free.answer_text, free.open_ended) == (
        [], "She is cooking.", "She is cooking.", True)
    assert free2.rationale == "Pan on the stove." and free2.open_ended
    assert (mc.open_ended, mc.answer_text, mc2.answer_text) == (False, "y", "y")
    with pytest.raises(ValueError, match="open-ended question has no option index"):
        _ = free.answer_index
    write_manifest(tmp_path / "out.jsonl", [mc, free, free2, mc2])
    assert read_manifest(tmp_path / "out.jsonl") == [mc, free, free2, mc2]
    written = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    # the lowest version that holds each row: multiple choice stays version 1
    assert [r["schema"] for r in written] == [1, 2, 2, 1]


def test_multiple_choice_rows_are_written_as_before(tmp_path):
    # the exact bytes version 1 always wrote for this sample
    s = Sample(**MC, rationale="because", split="train")
    write_manifest(tmp_path / "m.jsonl", [s])
    assert (tmp_path / "m.jsonl").read_text() == (
        '{"schema": 1, "id": "a", "video": "v/a.mp4", "question": "q?", "options": ["x", "y", '
        '"z"], "answer": "B", "rationale": "because", "split": "train"}\n')


@pytest.mark.parametrize(
    "row, message",
    [
        # an unversioned (version 1) row still needs its options: never silently open-ended
        ({k: v for k, v in OPEN.items() if k != "schema"}, "missing field 'options'"),
        ({**OPEN, "schema": 1, "options": []}, "field 'options' has 0 options (2..10 allowed)"),
        ({**OPEN, "options": ["only"]},
         "field 'options' has 1 options (2..10 allowed, or none for an open-ended question)"),
        ({**OPEN, "answer": "  "}, "field 'answer' must be a non-empty string"),
        ({**OPEN, "answer": 3}, "field 'answer' must be a non-empty string"),
        ({**OPEN, "options": ["x", "y"], "answer": "She is cooking."},
         "field 'answer' 'She is cooking.' is not among the 2 options (A-B)"),
        ({**OPEN, "options": "x"}, "field 'options' must be a list of strings"),
        ({**OPEN, "schema": 3}, "field 'schema': version 3 is not supported (known: 1, 2)"),
        ({k: v for k, v in OPEN.items() if k != "answer"}, "missing field 'answer'"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, row, message):
    p = _write(tmp_path, [MC, row])
    with pytest.raises(ManifestError) as exc:
        read_manifest(p)
    assert str(exc.value) == f"{p}:2: {message}"
