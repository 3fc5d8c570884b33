"""The latent engine (backbone-agnostic): see ``engine.py`` and docs/engine.md."""

from stormvl.latent.engine import (
    GenerateOutput,
    LatentModel,
    TrainOutput,
    format_question,
    forward_naive,
    forward_train,
    generate,
    naive_rollout,
    rollout,
)

__all__ = [
    "GenerateOutput", "LatentModel", "TrainOutput", "format_question", "forward_naive",
    "forward_train", "generate", "naive_rollout", "rollout",
]
