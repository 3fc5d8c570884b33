import json

import pytest

from stormvl.data.manifest import (
    JsonlAppender,
    Sample,
    read_jsonl_tolerant,
    read_manifest,
    resolve_media,
    write_manifest,
)
from stormvl.errors import ManifestError, UserError

GOOD = {"id": "a", "video": "v/a.mp4", "question": "q?", "options": ["x", "y", "z"], "answer": "B"}


def _write(tmp_path, rows):
    p = tmp_path / "m.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_roundtrip(tmp_path):
    s = Sample(**GOOD, rationale="because", state=[{"probe": 1}], meta={"k": 1})
    write_manifest(tmp_path / "m.jsonl", [s])
    (back,) = read_manifest(tmp_path / "m.jsonl")
    assert back == s and back.answer_text == "y"


@pytest.mark.parametrize(
    "patch, field",
    [
        ({"answer": "D"}, "answer"),
        ({"answer": "b"}, "answer"),
        ({"options": ["only"]}, "options"),
        ({"options": "x,y"}, "options"),
        ({"question": ""}, "question"),
        ({"start": "3"}, "start"),
        ({"extra": 1}, "unknown field"),
        ({"schema": 9}, "schema"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, patch, field):
    p = _write(tmp_path, [GOOD, {**GOOD, "id": "b", **patch}])
    with pytest.raises(ManifestError) as exc:
        read_manifest(p)
    assert f"{p}:2" in str(exc.value) and field in str(exc.value)


def test_missing_field_and_duplicates(tmp_path):
    row = dict(GOOD)
    del row["answer"]
    with pytest.raises(ManifestError, match="missing field 'answer'"):
        read_manifest(_write(tmp_path, [row]))
    with pytest.raises(ManifestError, match="duplicate id"):
        read_manifest(_write(tmp_path, [GOOD, GOOD]))


def test_media_root_escape(tmp_path):
    assert resolve_media(tmp_path, "v/a.mp4") == (tmp_path / "v/a.mp4").resolve()
    for bad in ["../x.mp4", "/etc/passwd", "v/../../x.mp4"]:
        with pytest.raises(ManifestError, match="escapes"):
            resolve_media(tmp_path, bad)


def test_appender_survives_torn_tail(tmp_path):
    p = tmp_path / "log.jsonl"
    with JsonlAppender(p) as log:
        log.write({"i": 0})
    with p.open("a") as fh:
        fh.write('{"i": 1, "trunc')  # a killed writer
    assert read_jsonl_tolerant(p) == [{"i": 0}]
    with JsonlAppender(p) as log:
        log.write({"i": 2})
    assert read_jsonl_tolerant(p) == [{"i": 0}, {"i": 2}]


def test_read_json_names_the_file_for_missing_damaged_and_binary(tmp_path):
    from stormvl.io import read_json

    good = tmp_path / "good.json"
    good.write_text('{"a": [1, 2]}')
    assert read_json(good) == {"a": [1, 2]}
    with pytest.raises(UserError, match=r"nope\.json: annotation file not found"):
        read_json(tmp_path / "nope.json", "annotation file")
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1,\n "b": }')
    with pytest.raises(ManifestError, match=r"bad\.json: not valid JSON \(.* at line 2\)"):
        read_json(bad, error=ManifestError)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00{")
    with pytest.raises(UserError, match=r"binary\.json:1: not valid UTF-8"):
        read_json(binary)
