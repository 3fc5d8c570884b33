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


def test_report_on_a_damaged_results_file_exits_2_naming_it(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "results.json: not found" in capsys.readouterr().err
    (tmp_path / "results.json").write_text('{"runs": ')
    assert main(["report", str(tmp_path)]) == 2
    assert "results.json: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "report.md").exists()
