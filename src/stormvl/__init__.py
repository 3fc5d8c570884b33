"""stormvl: latent spatial-temporal reasoning for video-language models.

The package is laid out by architecture:

- ``data``         manifest schema, video IO, importers
- ``synth``        the procedural spatial-temporal suite with exact thought videos
- ``backbones``    one adapter per model family (Qwen2.5-VL, Qwen3-VL) + tiny builders
- ``latent``       the latent engine (training forward and bounded rollout)
- ``training``     targets, methods and the training loop
- ``tasks``        benchmark readers, answer extraction and scoring
- ``cli``          the ``stormvl`` command line
"""

__version__ = "0.1.0"
