"""Evaluating a trained model: ``model`` (load a checkpoint with its training settings),
``runner`` (item -> prompt -> reply, batched) and ``run`` (a resumable, sharded, scored
benchmark run; one question)."""

from stormvl.evaluation.model import EvalSettings, LoadedModel, load_model
from stormvl.evaluation.run import answer_question, run_eval
from stormvl.evaluation.runner import Runner, load_runner

__all__ = ["EvalSettings", "LoadedModel", "Runner", "answer_question", "load_model",
           "load_runner", "run_eval"]
