"""`procedural`: exact thought videos from the built-in suite's renderer.

A sample made by ``stormvl synth`` carries its family, seed and difficulty, so the renderer
can redraw the scene's hidden states exactly (``stormvl.synth.regenerate``). Using it through
the generator interface lets a user compare exact and generated thought videos with the same
runner, sharding and corruption wrappers.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from stormvl.data.manifest import Sample
from stormvl.errors import UserError
from stormvl.thoughts.base import GenConfig, Generator, InputClip, check_video


@dataclass
class ProceduralConfig(GenConfig):
    """The renderer needs no settings beyond the shared ones; one input frame is enough."""

    input_frames: int = 1  # the input video is only checked to decode
    lossless: bool = True  # the suite's small objects smear under 4:2:0 chroma


class ProceduralGenerator(Generator):
    name = "procedural"
    config_cls = ProceduralConfig

    def __init__(self, config: ProceduralConfig):
        super().__init__(config)
        self._synth: Any = None

    def load(self) -> None:
        try:
            self._synth = importlib.import_module("stormvl.synth")
        except ModuleNotFoundError as exc:
            if exc.name is not None and exc.name.startswith("stormvl.synth"):
                raise UserError(
                    "--generator procedural: the procedural suite (stormvl.synth, issue 2) "
                    "is not installed in this build"
                ) from None
            raise
        if not hasattr(self._synth, "regenerate"):
            raise UserError("--generator procedural: stormvl.synth has no regenerate()")

    def _item(self, sample: Sample) -> Any:
        try:
            return self._synth.regenerate(sample)
        except UserError:
            raise
        except (KeyError, ValueError, TypeError) as exc:
            # Not a suite row (no family / seed) or one the renderer cannot redraw.
            raise UserError(f"sample {sample.id!r}: cannot regenerate ({exc})") from None

    def generate(self, sample: Sample, clip: InputClip) -> np.ndarray:
        item = self._item(sample)
        return check_video(item.thought, f"procedural({sample.id})")

    def output_fps(self, sample: Sample, clip: InputClip) -> float:
        # The thought shares the input video's canvas and time axis, frame for frame.
        return clip.info.fps
