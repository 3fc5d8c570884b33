"""The evidence beyond one family, and STORM's own ablations, as demo presets.

Each experiment is one ``stormvl demo --preset NAME --out DIR`` (resumable like every demo);
``stormvl report --experiment GROUP DIR...`` joins a group's folders into one table, and
docs/experiments.md says what each runs, how long, and how to read it. Every preset is
``quick`` (``full``'s recipe at half the batch; on the shell game it separates the methods
as ``full`` does, in minutes) at 3 seeds, with only what its experiment varies changed, so
the shell-game ones share their data and seeds, question for question:

- ``stages-*``: which of storm's stages does the work, and the recipe without rationales
  (STORM's own: Stage I = answer + alignment, Stage II = answer only), from scratch and
  from textcot's checkpoint; "Stage II only" is latent (answer-only K latents, storm's
  budget), "both" is storm;
- ``latents-k<K>``: how many latent steps (K = 4 is ``stages-curriculum``);
- ``thoughts-<strength>``: storm's Stage I on ``degrade``d thought videos;
- ``breadth-<family>``: direct, textcot, latent and storm on one other family that needs
  the whole video.
"""

from __future__ import annotations

from dataclasses import replace

from stormvl.demo.presets import METHODS, PRESETS, Preset

SEEDS = 3  # the least: paired gains with intervals over seeds
# the curriculum recipe (full's) at quick's size: the base row of the shell-game tables, and
# the folder whose textcot the others link in (docs/experiments.md)
BASE = replace(PRESETS["quick"], name="stages-curriculum", seeds=SEEDS, minutes=None)

# families whose answer needs the whole video (no single frame carries it, docs/synth.md),
# each at its level: tracking through transfers, the order of flashes, extrapolating a
# hidden path, a map built over a pan, a re-simulation without the block that was hit. The
# easy level, as the shell game's; each preset's textcot says whether it is learnable.
# Canonical option order makes a letter name a place where the family has one
# (containment's boxes left to right, the gates top to bottom, map_building's four
# quadrants), as the shell game's cups; event_order's and counterfactual's answers are
# colours, so there the model must match option text to the picture. Their options (and
# most of their questions) vary from clip to clip, so they keep the chat prompt (question
# and options in the text), which bare leaves out
BREADTH = {"containment": "easy", "event_order": "easy", "occluded_trajectory": "easy",
           "map_building": "easy", "counterfactual": "easy"}
# no oracle (the thought video as a second input): it costs as much as two other methods,
# and textcot already says whether a family is learnable
BREADTH_METHODS = tuple(m for m in METHODS if m != "oracle")

# the recipe with no rationale in latent's or storm's own training: from scratch the
# bottleneck stopped every latent run from learning (docs/demo.md, finding 8), so it is off
# there, as in STORM's model; from textcot's checkpoint it stays on, as in `full`
SCRATCH = replace(BASE, latent_from_textcot=0, internalize_at=(), bottleneck=False)
FROM_TEXTCOT = replace(BASE, internalize_at=())
STAGE1_ONLY = 1.0  # storm's whole budget in Stage I: no answer-only Stage II

# storm's thought videos corrupted by the `degrade` generator (the paper's named limitation:
# how much does Stage I need good thought videos?): the three corruptions at once, at two
# strengths. Noise in pixel levels of 0..255; shuffle / wrong-state as probabilities
DEGRADE = {
    "weak": (("noise_sigma", 16.0), ("shuffle_p", 0.25), ("wrong_state_p", 0.25)),
    "strong": (("noise_sigma", 64.0), ("shuffle_p", 1.0), ("wrong_state_p", 1.0)),
}

EXPERIMENTS: dict[str, Preset] = {
    # the curriculum recipe: "both" is its storm, "Stage II only" its latent
    "stages-curriculum": BASE,
    "stages-curriculum-stage1": replace(BASE, name="stages-curriculum-stage1",
                                        stage1_fraction=STAGE1_ONLY, methods=("textcot", "storm")),
    "stages-scratch": replace(SCRATCH, name="stages-scratch", methods=("direct", "latent", "storm")),
    "stages-scratch-stage1": replace(SCRATCH, name="stages-scratch-stage1",
                                     stage1_fraction=STAGE1_ONLY, methods=("storm",)),
    "stages-textcot": replace(FROM_TEXTCOT, name="stages-textcot",
                              methods=("textcot", "latent", "storm")),
    "stages-textcot-stage1": replace(FROM_TEXTCOT, name="stages-textcot-stage1",
                                     stage1_fraction=STAGE1_ONLY, methods=("textcot", "storm")),
    **{f"latents-k{k}": replace(BASE, name=f"latents-k{k}", k=k, methods=("textcot", "latent", "storm"))
       for k in (2, 8, 16)},
    **{f"thoughts-{s}": replace(BASE, name=f"thoughts-{s}", thought_degrade=spec,
                                methods=("textcot", "storm"))
       for s, spec in DEGRADE.items()},
    **{f"breadth-{f}": replace(BASE, name=f"breadth-{f}", families=(f,), difficulty=level,
                               prompt="chat", methods=BREADTH_METHODS)
       for f, level in BREADTH.items()},
}

# what each experiment's table is made of, in its rows' order
GROUPS: dict[str, tuple[str, ...]] = {
    "stages": ("stages-curriculum", "stages-curriculum-stage1", "stages-scratch",
               "stages-scratch-stage1", "stages-textcot", "stages-textcot-stage1"),
    "latents": ("latents-k2", "stages-curriculum", "latents-k8", "latents-k16"),
    "thoughts": ("stages-curriculum", "thoughts-weak", "thoughts-strong"),
    "breadth": tuple(f"breadth-{f}" for f in BREADTH),
}


def at_test_size(preset: Preset) -> Preset:
    """``preset``'s recipe at the ``test`` preset's sizes (seconds: what CI runs of it).

    Its family, level, methods, K, stage split, prompt, thought corruption and bottleneck
    stay; the textcot start and the curriculum shrink to fit 6 steps (start at 3, one
    sentence dropped at step 1).
    """
    test = PRESETS["test"]
    sizes = {f: getattr(test, f) for f in (
        "n_train", "n_val", "n_test", "n_ood", "ood_shifts", "frames", "size", "backbone",
        "batch_size", "curve_points", "eval_batch", "diag_n", "synth_workers", "data_workers")}
    return replace(preset, name=f"{preset.name}@test", **sizes, steps=6, seeds=1, parallel=1,
                   latent_from_textcot=3 if preset.latent_from_textcot else 0,
                   internalize_at=(1,) if preset.internalize_at else ())
