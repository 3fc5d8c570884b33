"""Usage mistakes on the command line: one `error:` line naming everything wrong, exit 2."""

from __future__ import annotations

import pytest

from stormvl.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    got = capsys.readouterr()
    return rc, got.out, got.err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize(("command", "flags", "missing"), [
    ("eval", [], ["--model", "--benchmark", "--data", "--out"]),
    ("eval", ["--model", "m", "--out", "o"], ["--benchmark", "--data"]),
    ("score", ["--benchmark", "synth"], ["--data", "--predictions"]),
    ("answer", ["--video", "v.mp4"], ["--model", "--question"]),
    ("synth", [], ["--out", "--n"]),
    ("train", [], ["CONFIG"]),
    ("export", [], ["CHECKPOINT", "OUT"]),
    ("thoughts merge", [], ["DIRS"]),
])
def test_every_missing_option_and_argument_named_in_one_line(capsys, command, flags, missing):
    rc, out, err = run(capsys, *command.split(), *flags)
    assert rc == 2 and out == ""
    assert one_error_line(err) == (f"error: stormvl {command}: missing {', '.join(missing)} "
                                   f"(see 'stormvl {command} --help')")


@pytest.mark.parametrize(("argv", "says"), [
    (["eval", "--model", "m", "--frames", "abc"], "Invalid value for '--frames'"),
    (["no-such-command"], "No such command 'no-such-command'"),
    (["families", "--bogus"], "No such option: --bogus"),
])
def test_other_usage_errors_are_one_line_too(capsys, argv, says):
    rc, _, err = run(capsys, *argv)
    assert rc == 2 and says in one_error_line(err)


def test_help_still_prints_usage_and_exits_0(capsys):
    rc, out, err = run(capsys, "eval", "--help")
    assert rc == 0 and "Usage: stormvl eval" in out and "--benchmark" in out and err == ""


def test_bare_command_prints_its_help(capsys):
    rc, out, err = run(capsys)
    assert rc == 2 and "Usage: stormvl" in out + err and "error:" not in out + err
    for name in ("synth", "train", "eval", "thoughts"):
        assert name in out + err
