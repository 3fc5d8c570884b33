"""Thought videos for real data: a small generator interface, three backends, a runner.

``procedural`` redraws the built-in suite's hidden states exactly, ``diffusers`` asks an
image-to-video model to continue the input video, ``degrade`` corrupts another generator's
output. ``run_thoughts`` drives any of them over a manifest (sharded, resumable) and
``merge_shards`` joins the shards. See docs/thoughts.md.
"""

from stormvl.thoughts.base import (
    GenConfig,
    Generator,
    InputClip,
    build_generator,
    generator_class,
    generator_names,
    register,
    sample_seed,
)
from stormvl.thoughts.runner import RunStats, merge_shards, parse_shard, run_thoughts


def _procedural():
    from stormvl.thoughts.procedural import ProceduralGenerator

    return ProceduralGenerator


def _degrade():
    from stormvl.thoughts.degrade import DegradeGenerator

    return DegradeGenerator


def _diffusers():
    from stormvl.thoughts.diffusers_gen import DiffusersGenerator

    return DiffusersGenerator


register("procedural", _procedural)
register("degrade", _degrade)
register("diffusers", _diffusers)

__all__ = [
    "GenConfig",
    "Generator",
    "InputClip",
    "RunStats",
    "build_generator",
    "generator_class",
    "generator_names",
    "merge_shards",
    "parse_shard",
    "register",
    "run_thoughts",
    "sample_seed",
]
