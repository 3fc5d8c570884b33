import subprocess
import sys

from stormvl.cli import main


def test_help_lists_every_subcommand():
    out = subprocess.run(
        [sys.executable, "-m", "stormvl", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in ["synth", "families", "audit", "train", "eval", "score", "answer", "demo", "report", "thoughts", "export"]:
        assert name in out


def test_usage_error_exit_code():
    assert main(["no-such-command"]) == 2
