"""The family registry and the pure entry points ``generate`` / ``regenerate``."""

from __future__ import annotations

from collections import OrderedDict

from stormvl.data.manifest import Sample
from stormvl.errors import UserError
from stormvl.synth.base import (
    DIFFICULTIES,
    GENERATOR_VERSION,
    OPTION_ORDERS,
    SPLITS,
    Family,
    Spec,
    SynthItem,
    assemble,
)
from stormvl.synth.families.collision import Collision
from stormvl.synth.families.containment import Containment
from stormvl.synth.families.counterfactual import Counterfactual
from stormvl.synth.families.direction import Direction
from stormvl.synth.families.event_count import EventCount
from stormvl.synth.families.event_order import EventOrder
from stormvl.synth.families.map_building import MapBuilding
from stormvl.synth.families.occluded_trajectory import OccludedTrajectory
from stormvl.synth.families.rotation import Rotation
from stormvl.synth.families.shell_game import ShellGame
from stormvl.synth.families.speed import Speed
from stormvl.synth.families.state_change import StateChange

MIN_FRAMES = 8
MIN_SIZE = 32
MAX_SIZE = 1024

FAMILIES: OrderedDict[str, Family] = OrderedDict(
    (f.name, f)
    for f in (
        ShellGame(),
        OccludedTrajectory(),
        Collision(),
        Counterfactual(),
        EventOrder(),
        EventCount(),
        StateChange(),
        Direction(),
        Rotation(),
        Speed(),
        Containment(),
        MapBuilding(),
    )
)


def check_args(family: str, split: str, difficulty: str, frames: int, size: int,
               intro: float = 0.0, option_order: str = "shuffled") -> list[str]:
    """Every problem with generation arguments, as one-line messages (empty = fine)."""
    problems = []
    if not 0.0 <= intro <= 1.0:
        problems.append(f"--intro {intro} must be a share in [0, 1]")
    if option_order not in OPTION_ORDERS:
        problems.append(f"--option-order {option_order!r} must be one of {', '.join(OPTION_ORDERS)}")
    if family not in FAMILIES:
        problems.append(f"unknown family {family!r} (known: {', '.join(FAMILIES)})")
    if split not in SPLITS:
        problems.append(f"--split {split!r} must be one of {', '.join(SPLITS)}")
    if difficulty not in DIFFICULTIES:
        problems.append(f"--difficulty {difficulty!r} must be one of {', '.join(DIFFICULTIES)}")
    if frames < MIN_FRAMES:
        problems.append(f"--frames {frames} is too few (need >= {MIN_FRAMES})")
    if size < MIN_SIZE or size > MAX_SIZE or size % 2:
        problems.append(f"--size {size} must be an even number of pixels in [{MIN_SIZE}, {MAX_SIZE}]")
    return problems


def generate(
    family: str,
    index: int,
    seed: int = 0,
    split: str = "train",
    difficulty: str = "easy",
    frames: int = 16,
    size: int = 64,
    intro: float = 0.0,
    option_order: str = "shuffled",
) -> SynthItem:
    """Generate sample ``index`` of ``family``: pure and deterministic, no IO.

    ``intro`` is the share of items drawn at the family's foothold level (training data that
    a model learning from scratch can get off chance on); ``option_order="canonical"`` lists
    the options in the family's natural order instead of at balanced random letters.

    Returns:
        SynthItem with video / thought (T, size, size, 3) uint8, question, 4 options, the
        answer letter, rationale, per-frame state (each with a ``probe`` label) and meta
        (``meta["synth"]`` regenerates the sample exactly).

    Raises:
        UserError: an unknown family / split / difficulty or an impossible canvas.
    """
    problems = check_args(family, split, difficulty, frames, size, intro, option_order)
    if index < 0:
        problems.append(f"index {index} must be >= 0")
    if problems:
        raise UserError("; ".join(problems))
    spec = Spec(family, int(index), int(seed), split, difficulty, int(frames), int(size),
                float(intro), option_order)
    return assemble(FAMILIES[family], spec)


def chain_label(sample: Sample) -> str:
    """``"<family>: <knob> <n>"`` for families with a chain knob (the shell game's swaps),
    else ``"-"``: accuracy by chain length shows where tracking stops."""
    fam = FAMILIES.get(sample.family or "")
    params = ((sample.meta or {}).get("synth") or {}).get("params") or {}
    if fam is None or not fam.chain or fam.chain not in params:
        return "-"
    return f"{fam.name}: {fam.chain} {params[fam.chain]}"


def regenerate(sample: Sample) -> SynthItem:
    """Rebuild a manifest sample from ``sample.meta["synth"]`` (identical pixels).

    Raises:
        UserError: the sample was not made by this generator.
    """
    args = (sample.meta or {}).get("synth")
    if not isinstance(args, dict):
        raise UserError(f"sample {sample.id!r}: no meta['synth'] to regenerate from")
    keys = ("family", "index", "seed", "split", "difficulty", "frames", "size")
    missing = [k for k in keys if k not in args]
    if missing:
        raise UserError(f"sample {sample.id!r}: meta['synth'] lacks {missing}")
    if args.get("version", GENERATOR_VERSION) != GENERATOR_VERSION:
        raise UserError(
            f"sample {sample.id!r}: made by synth generator version {args['version']}, this is "
            f"version {GENERATOR_VERSION}; its pixels cannot be reproduced exactly"
        )
    optional = ("intro", "option_order")  # absent from rows written before they existed
    return generate(**{k: args[k] for k in keys + optional if k in args})
