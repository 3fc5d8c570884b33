"""Demo presets: the whole method at three sizes.

``test`` is what the test suite runs (seconds). ``quick`` is the README's first command:
``full``'s recipe (the shell game at its easy level, textcot's curriculum into the latents,
the answer reading only the latents) at a size that fits minutes on 2 cores: one seed, half
the batch, no oracle, and the ``bare`` prompt (the video alone: at this size the constant
question, options and chat template were ~85% of a step's tokens). ``full`` is the evidence
run: 5 seeds per method with the chat prompt (a pilot's seed-to-seed spread was 10-15
points, larger than some gains), with the oracle and three ood splits.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from stormvl.errors import UserError
from stormvl.training.config import METHODS

# Out-of-distribution splits beside the suite's own ``ood`` (held-out knob ranges: for the
# shell game 6 cups, a layout no method, oracle included, scored above chance on). Each
# shift keeps the task at the trained level and holds out one rendering parameter, so an
# upper bound (textcot, oracle) can still answer and a gain can be seen to hold or not.
SUITE_OOD = "each family's held-out knob ranges (shell game: 6 cups, 4 of them offered)"
OOD_SHIFTS = {
    "ood-size": "frames drawn at 4/3 of the trained size (64 px for 48), the same task",
    "ood-tempo": "videos with twice the frames, of which the model samples its usual count",
}


def shift_render(frames: int, size: int, shift: str) -> tuple[int, int]:
    """(frames, size) of an ood shift's videos, from the trained ones."""
    if shift == "ood-size":
        return frames, 2 * round(size * 2 / 3)  # even, as the renderer wants: 48 -> 64
    if shift == "ood-tempo":
        return 2 * frames, size
    raise UserError(f"unknown ood shift {shift!r} (choose from {', '.join(OOD_SHIFTS)})")


@dataclass(frozen=True)
class Preset:
    """Sizes of one demo run. Every method gets the same optimizer-step budget."""

    name: str
    families: tuple[str, ...] = ()  # empty = every family of the suite
    n_train: int = 1200  # training questions (spread over families)
    n_val: int = 96  # validation questions (training curves)
    n_test: int = 240  # test questions
    n_ood: int = 120  # out-of-distribution questions per ood split
    ood_shifts: tuple[str, ...] = ()  # OOD_SHIFTS scored beside the suite's own ood split
    suite_ood: bool = True  # score the suite's own ood split (its question differs: not bare)
    frames: int = 8  # frames per video (input and thought video)
    size: int = 48  # square frame size in pixels
    difficulty: str = "mixed"  # level of every split (the suite's --difficulty)
    # share of training clips at each family's foothold level (a shell game with no swap):
    # from scratch, no method got off chance on the shell game without one (docs/demo.md)
    intro: float = 0.2
    # options in each family's natural order (a letter always names the same cup): shuffled
    # letters were not learned at all in 300 steps where ordered ones took ~250
    option_order: str = "canonical"
    backbone: str = "tiny:qwen2_5_vl:small"  # trainer backbone string
    # data.prompt of every run: "chat" (system turn, question, options, instruction) or
    # "bare" (the video alone: one family, one question, options in canonical order)
    prompt: str = "chat"
    steps: int = 150  # optimizer steps per method (storm: both stages together)
    batch_size: int = 16
    lr: float = 1e-3
    k: int = 4  # latent steps (latent, storm)
    # the tiny tower stays at its random init: trained from scratch beside the language
    # model it collapsed to sample-independent features (no method, oracle included, could
    # then memorise even 32 clips); frozen, it is a fixed random feature extractor
    freeze_vision: bool = True
    target_encoder: str = "random_projection"  # storm targets: random_projection | backbone
    # storm's training thought videos through the `degrade` generator with these settings
    # ((DegradeConfig field, value) pairs); () = the suite's exact ones
    thought_degrade: tuple[tuple[str, float], ...] = ()
    stage1_fraction: float = 0.5  # storm: share of the step budget in Stage I (1.0: no Stage II)
    # storm: Stage II's learning rate as a share of `lr`; at the full rate answer-only Stage II
    # undid Stage I in two seeds of five (finding 10)
    stage2_lr_scale: float = 1.0
    align_weight: float = 1.0  # storm Stage I lambda
    bottleneck: bool = False  # latent / storm answer only through the latent chain (--[no-]bottleneck)
    # Coconut's recipe for latent and storm: start from this seed's textcot checkpoint at this
    # step (its written chain is stage 0, counted in their budget: they train `steps` minus
    # it), then stop writing the rationale one sentence per `internalize_at` step (steps of
    # their own run; storm: of Stage I). 0 = from scratch with the answer alone.
    latent_from_textcot: int = 0
    internalize_at: tuple[int, ...] = ()
    curve_points: int = 3  # checkpoints per method evaluated on val for the curves
    eval_batch: int = 16
    diag_n: int = 96  # test questions used by the latent diagnostics
    seeds: int = 1
    synth_workers: int = 2
    data_workers: int = 1  # DataLoader decode workers (overlap video decoding with compute)
    parallel: int = 1  # training runs at once (processes; the cores are split between them)
    methods: tuple[str, ...] = field(default=METHODS)
    # the wall-time goal of the whole demo on 2 cores (the report checks it), None = none
    minutes: float | None = None

    def __post_init__(self) -> None:
        """Refuse a preset whose runs would fail after others trained (a latent run that
        starts from a textcot checkpoint no one saves finds out only when textcot is done)."""
        n, problem = self.latent_from_textcot, None
        if not n:
            return
        if n >= self.steps:
            problem = f"latent_from_textcot={n} leaves no steps of the {self.steps}-step budget"
        elif n % self.checkpoint_every(self.steps):
            problem = (f"latent_from_textcot={n} is not a step textcot saves at (every "
                       f"{self.checkpoint_every(self.steps)} = steps // curve_points)")
        elif self.internalize_at and self.internalize_at[-1] >= self.stage1_steps(self.steps - n):
            problem = (f"internalize_at ends at {self.internalize_at[-1]}, not below storm's "
                       f"{self.stage1_steps(self.steps - n)} Stage-I steps")
        if problem:
            raise UserError(f"preset {self.name}: {problem}")

    def checkpoint_every(self, steps: int) -> int:
        """Checkpoint interval of a ``steps``-step run: ``curve_points`` checkpoints each."""
        return max(1, steps // max(1, self.curve_points))

    def stage1_steps(self, steps: int) -> int:
        """Storm's Stage-I share of its ``steps``; Stage II trains the rest."""
        return max(1, int(round(steps * self.stage1_fraction)))

    def with_seeds(self, seeds: int | None) -> Preset:
        return self if seeds is None else replace(self, seeds=seeds)

    def with_methods(self, methods: str | None) -> Preset:
        """``"direct,storm"`` -> only those methods (in METHODS order)."""
        if not methods:
            return self
        names = [m.strip() for m in methods.split(",") if m.strip()]
        unknown = [m for m in names if m not in METHODS]
        if unknown or not names:
            raise UserError(f"--methods: unknown method {', '.join(map(repr, unknown)) or '(none)'}"
                            f" (choose from {', '.join(METHODS)})")
        return replace(self, methods=tuple(m for m in METHODS if m in names))

    @property
    def ood_splits(self) -> tuple[str, ...]:
        return ("ood",) * self.suite_ood + self.ood_shifts


PRESETS: dict[str, Preset] = {
    "test": Preset(
        name="test", families=("shell_game", "event_order"), n_train=24, n_val=8, n_test=16,
        n_ood=8, ood_shifts=tuple(OOD_SHIFTS), frames=8, size=32, backbone="tiny:qwen2_5_vl:tiny",
        steps=4, batch_size=4,
        k=2, curve_points=2, eval_batch=8, diag_n=16, synth_workers=1, data_workers=0,
    ),
    # full's recipe at minutes' size: the same family, level, data and step budget, half the
    # batch, one seed, the video-only prompt, no oracle and no ood split (docs/demo.md)
    "quick": Preset(
        name="quick", families=("shell_game",), difficulty="easy", n_train=4000, n_val=64,
        n_test=200, suite_ood=False, prompt="bare", steps=1500, batch_size=16, curve_points=3,
        diag_n=200, seeds=1, parallel=2, minutes=10,
        methods=("direct", "textcot", "latent", "storm"),
        latent_from_textcot=1000, internalize_at=(100, 200, 300), stage1_fraction=0.8,
        stage2_lr_scale=0.1, bottleneck=True,
    ),
    # the evidence run: one family at the level and budget where methods first separated (4
    # cups, 1,500 steps of 32 questions, docs/demo.md), 5 seeds for paired gains; hours on 2
    # cores, see the docs
    "full": Preset(
        name="full", families=("shell_game",), difficulty="easy", n_train=4000, n_val=96,
        n_test=400, n_ood=200, ood_shifts=tuple(OOD_SHIFTS),
        steps=1500, batch_size=32, curve_points=3, diag_n=200, seeds=5, parallel=2, minutes=None,
        # from scratch no latent method learned the shell game in 1,500 steps; from textcot's
        # step 1000 with the written chain dropped sentence by sentence, storm did (finding 9)
        latent_from_textcot=1000, internalize_at=(100, 200, 300), stage1_fraction=0.8,
        stage2_lr_scale=0.1,
        # answers only through the latent chain: over 5 seeds storm 69.0 vs 61.6 without, and
        # its latents used in every seed (findings 9-10)
        bottleneck=True,
    ),
}
