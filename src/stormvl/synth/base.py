"""What every task family shares: the sample spec, the seeded context, answer balancing.

A family turns a ``Ctx`` (seeded RNG + difficulty knobs + canvas) into an ``Episode``: input
frames, thought frames, question, the correct option text, distractors, rationale and the
per-frame state. ``generate`` then places the correct option at a letter drawn from a
balanced per-index schedule, so letters are exactly balanced over every block of 4 indices
and cannot correlate with pixels.

Determinism: the RNG of a sample is seeded by (seed, split, family, index) only, through
``numpy.random.SeedSequence``; names are hashed with crc32 (stable across processes and
Python versions, unlike ``hash``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stormvl.data.manifest import LETTERS

SPLITS = ("train", "val", "test", "ood")
LEVELS = ("easy", "medium", "hard")
DIFFICULTIES = (*LEVELS, "mixed")
# "intro": a family's foothold level (e.g. a shell game with no swap), drawn for a share of
# the items only when asked (``Spec.intro``); families without one fall back to "easy"
INTRO = "intro"
OPTION_ORDERS = ("shuffled", "canonical")
NUM_OPTIONS = 4
GENERATOR_VERSION = 2


def _h(name: str) -> int:
    return zlib.crc32(name.encode())


@dataclass(frozen=True)
class Spec:
    """Everything that determines one sample (stored as ``meta["synth"]``)."""

    family: str
    index: int
    seed: int
    split: str
    difficulty: str
    frames: int
    size: int
    intro: float = 0.0  # share of items drawn at the family's intro level
    option_order: str = "shuffled"  # shuffled: balanced letters; canonical: the family's order

    def rng(self, tag: str = "sample", *extra: int) -> np.random.Generator:
        key = [self.seed, _h(self.split), _h(self.family), _h(tag), *extra]
        return np.random.default_rng(np.random.SeedSequence(key))

    def balanced(self, n: int, tag: str) -> int:
        """A value in [0, n) from a schedule that is exactly balanced over blocks of n indices.

        Block b = index // n gets its own random permutation, so the value of index i still
        depends only on (seed, split, family, i) and not on which worker made it.
        """
        perm = self.rng(f"schedule/{tag}", self.index // n).permutation(n)
        return int(perm[self.index % n])


@dataclass
class SynthItem:
    """One generated sample, in memory (no IO)."""

    video: np.ndarray  # (T, H, W, 3) uint8, what the model sees
    thought: np.ndarray  # (T, H, W, 3) uint8, what must be imagined, same canvas and time axis
    question: str
    options: list[str]  # NUM_OPTIONS option texts, no letters
    answer: str  # letter
    rationale: str
    state: list[dict]  # one dict per frame; "probe" = categorical hidden-state label
    meta: dict[str, Any]


@dataclass
class Episode:
    """A family's output before the answer letter is placed."""

    video: np.ndarray
    thought: np.ndarray
    question: str
    correct: str
    distractors: list[str]  # at least NUM_OPTIONS - 1 texts, all different from ``correct``
    rationale: str
    state: list[dict]
    # every possible answer text in the family's natural order (e.g. cups left to right), for
    # ``option_order="canonical"``; None sorts the options by text
    universe: list[str] | None = None


@dataclass
class Ctx:
    """Seeded randomness and resolved difficulty knobs handed to a family."""

    spec: Spec
    level: str  # easy / medium / hard actually used (``mixed`` resolved per index)
    knobs: dict[str, tuple]  # knob -> (lo, hi) for this level and split
    rng: np.random.Generator
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def T(self) -> int:  # noqa: N802 - the paper's symbol for the frame count
        return self.spec.frames

    @property
    def S(self) -> int:  # noqa: N802
        return self.spec.size

    def int(self, name: str) -> int:
        """Draw an integer knob uniformly from its inclusive range; recorded in params."""
        lo, hi = self.knobs[name]
        v = int(self.rng.integers(lo, hi + 1))
        self.params[name] = v
        return v

    def float(self, name: str) -> float:
        lo, hi = self.knobs[name]
        v = float(self.rng.uniform(lo, hi))
        self.params[name] = round(v, 6)
        return v

    def balanced(self, n: int, tag: str = "answer") -> int:
        return self.spec.balanced(n, tag)

    def choice(self, seq, k: int | None = None, exclude=()):
        """Random element (k None) or k distinct elements of ``seq`` minus ``exclude``."""
        pool = [s for s in seq if s not in exclude]
        if k is None:
            return pool[int(self.rng.integers(len(pool)))]
        idx = self.rng.choice(len(pool), size=k, replace=False)
        return [pool[int(i)] for i in idx]


class Family:
    """Base class of a task family; subclasses set the class attributes and ``make``.

    ``levels`` maps easy/medium/hard/ood (and optionally intro) to knob ranges (inclusive
    ints or float intervals). Knobs listed under ``ood`` replace the level's range on the ood
    split, and those ranges never overlap any easy/medium/hard range (checked by the tests).
    """

    name: str = ""
    description: str = ""
    levels: dict[str, dict[str, tuple]] = {}
    probe: str = ""  # what the per-frame ``probe`` label means
    chain: str = ""  # integer knob counting the hidden changes to follow (report breakdown)

    def knobs(self, level: str, split: str) -> dict[str, tuple]:
        out = dict(self.levels[level])
        if split == "ood":
            out.update(self.levels["ood"])
        return out

    def make(self, ctx: Ctx) -> Episode:  # pragma: no cover - abstract
        raise NotImplementedError


def resolve_level(fam: Family, spec: Spec) -> str:
    """The level of one item: the intro share first, then ``mixed`` spread evenly."""
    if spec.intro > 0 and spec.rng("intro", spec.index).random() < spec.intro:
        return INTRO if INTRO in fam.levels else "easy"
    if spec.difficulty == "mixed":
        return LEVELS[spec.balanced(len(LEVELS), "level")]
    return spec.difficulty


def place_options(ep: Episode, spec: Spec, rng: np.random.Generator) -> tuple[list[str], int]:
    """The NUM_OPTIONS option texts and the index of the correct one.

    Shuffled (default): the correct text goes to a letter from the balanced schedule, so
    letters cannot correlate with pixels. Canonical: the chosen texts in the family's natural
    order, so a letter always means the same thing (a cup position, say) - easier to learn
    from scratch, at the price of letters that follow the answer distribution.
    """
    distract = list(ep.distractors)
    assert ep.correct not in distract and len(set(distract)) == len(distract)
    order = rng.permutation(len(distract))[: NUM_OPTIONS - 1]
    options = [distract[int(i)] for i in order]
    if spec.option_order == "canonical":
        rank = {t: i for i, t in enumerate(ep.universe or [])}
        options = sorted([ep.correct, *options], key=lambda t: (rank.get(t, len(rank)), t))
        return options, options.index(ep.correct)
    letter = spec.balanced(NUM_OPTIONS, "letter")
    options.insert(letter, ep.correct)
    return options, letter


def assemble(fam: Family, spec: Spec) -> SynthItem:
    """Run one family for one spec and place its options."""
    level = resolve_level(fam, spec)
    ctx = Ctx(spec, level, fam.knobs(level, spec.split), spec.rng("sample", spec.index))
    ep = fam.make(ctx)
    options, letter = place_options(ep, spec, ctx.rng)
    assert len(ep.state) == spec.frames and all("probe" in s for s in ep.state)
    assert ep.video.shape == ep.thought.shape == (spec.frames, spec.size, spec.size, 3)
    meta = {
        "synth": {
            **spec.__dict__,
            "level": level,
            "params": ctx.params,
            "version": GENERATOR_VERSION,
        }
    }
    return SynthItem(
        ep.video, ep.thought, ep.question, options, LETTERS[letter], ep.rationale, ep.state, meta
    )


def ordinal(n: int) -> str:
    return {1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth", 6: "sixth"}.get(
        n, f"{n}th"
    )


def spans(n_events: int, frames: int, min_len: int, rng: np.random.Generator, gap: int = 0):
    """Split frames [1, T-1) into ``n_events`` consecutive (start, end) spans, end exclusive.

    Each span is at least ``min_len`` frames (clipped to what fits); the first and last frame
    stay event-free so single-frame baselines never see an event in progress. Leftover frames
    are spread at random between events.
    """
    usable = frames - 2
    if n_events + gap * (n_events - 1) > usable:
        gap = 0  # too many events for gaps: back to back (different objects stay distinct)
    base = max(1, min(min_len, (usable - gap * (n_events - 1)) // n_events))
    spare = usable - base * n_events - gap * (n_events - 1)
    extra = rng.multinomial(max(spare, 0), np.ones(n_events + 1) / (n_events + 1))
    out, t = [], 1 + int(extra[0])
    for k in range(n_events):
        out.append((t, t + base))
        t += base + gap + int(extra[k + 1])
    return out


def durations(n: int, total: int, min_len: int, rng: np.random.Generator) -> list[int]:
    """``n`` positive durations summing to ``total``, each >= min_len where that fits."""
    m = max(1, min(min_len, total // n))
    extra = rng.multinomial(total - m * n, np.ones(n) / n)
    return [m + int(e) for e in extra]
