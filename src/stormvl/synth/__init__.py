"""The procedural spatial-temporal suite: task families, exact thought videos, audit.

Public API:

- ``FAMILIES``: ordered dict name -> family (``.description``, ``.levels``, ``.probe``)
- ``generate(family, index, seed, split, difficulty, frames, size) -> SynthItem`` (pure)
- ``regenerate(sample) -> SynthItem`` from a manifest row's ``meta["synth"]``
- ``build_suite(out_dir, n, ...)``: write videos, thought videos and the manifest (resumable)
- ``run_audit(dir)``: the anti-shortcut baselines
"""

from stormvl.synth.base import SynthItem
from stormvl.synth.build import build_suite
from stormvl.synth.registry import FAMILIES, generate, regenerate

__all__ = ["FAMILIES", "SynthItem", "build_suite", "generate", "regenerate"]
