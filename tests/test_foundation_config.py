from dataclasses import dataclass, field
from typing import Literal

import pytest

from stormvl.config import load_config, parse_overrides, save_config
from stormvl.errors import ConfigError


@dataclass
class Optim:
    lr: float = 1e-3
    steps: int = 10


@dataclass
class Run:
    name: str = "x"
    method: Literal["direct", "storm"] = "direct"
    families: list[str] = field(default_factory=list)
    optim: Optim = field(default_factory=Optim)
    seed: int | None = None

    def validate(self) -> list[str]:
        return ["optim.steps: must be >= 1"] if self.optim.steps < 1 else []


def test_yaml_plus_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("method: storm\noptim:\n  lr: 0.1\n")
    cfg = load_config(Run, p, ["optim.steps=5", "families=a,b", "seed=3"])
    assert cfg.method == "storm" and cfg.optim.lr == 0.1 and cfg.optim.steps == 5
    assert cfg.families == ["a", "b"] and cfg.seed == 3


def test_every_problem_in_one_message(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("methd: storm\noptim:\n  lr: fast\n  steps: 0\n")
    with pytest.raises(ConfigError) as exc:
        load_config(Run, p, ["method=nope"])
    msg = str(exc.value)
    for part in ["methd: unknown key", "optim.lr: expected a number", "method: 'nope'", "steps: must be >= 1", str(p)]:
        assert part in msg, (part, msg)


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Run, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])


def test_roundtrip(tmp_path):
    cfg = load_config(Run, None, ["optim.lr=0.5", "families=[x]"])
    save_config(cfg, tmp_path / "r.yaml")
    assert load_config(Run, tmp_path / "r.yaml") == cfg
