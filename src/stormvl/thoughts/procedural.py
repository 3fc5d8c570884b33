"""`procedural`: exact thought videos from the built-in suite's renderer.

A row made by ``stormvl synth`` carries its generation arguments in ``meta["synth"]``, so
the renderer can redraw the scene's hidden states exactly (``stormvl.synth.regenerate``).
Using it through the generator interface lets a user compare exact and generated thought
videos with the same runner, sharding and corruption wrappers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stormvl.data.manifest import Sample
from stormvl.synth import regenerate
from stormvl.thoughts.base import GenConfig, Generator, InputClip, check_video


@dataclass
class ProceduralConfig(GenConfig):
    """The renderer needs no settings beyond the shared ones; one input frame is enough."""

    input_frames: int = 1  # the input video is only checked to decode
    lossless: bool = True  # the suite's small objects smear under 4:2:0 chroma


class ProceduralGenerator(Generator):
    name = "procedural"
    config_cls = ProceduralConfig

    def generate(self, sample: Sample, clip: InputClip) -> np.ndarray:
        # regenerate raises UserError for a row the suite did not make; the runner skips it.
        return check_video(regenerate(sample).thought, f"procedural({sample.id})")

    def output_fps(self, sample: Sample, clip: InputClip) -> float:
        # The thought shares the input video's canvas and time axis, frame for frame.
        return clip.info.fps
