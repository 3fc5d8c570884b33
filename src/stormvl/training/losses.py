"""Loss functions of the methods: answer cross-entropy and latent/target alignment.

Pure tensor functions; the loop picks and weights them from the config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def answer_ce(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean next-token cross-entropy over supervised positions.

    Args:
        logits: (B, L, V) scores for the token *after* each position.
        labels: (B, L) target ids aligned with the input (shifted here), ``ignore_index``
            outside the supervised span.

    Returns:
        scalar; 0 (with grad) when nothing is supervised.
    """
    logits = logits[:, :-1].float()  # (B, L-1, V)
    target = labels[:, 1:]  # (B, L-1)
    if (target != ignore_index).sum() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=ignore_index)


def align_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    kind: str = "cosine",
    temperature: float = 0.1,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Alignment of predicted latent vectors to fixed targets.

    Args:
        pred: (B, K, P, D) projected latent states (P = targets per step, 1 for "mean").
        target: (B, K, P, D) thought-video targets (no gradient).
        kind: "cosine" = mean (1 - cos); "mse" on unit-normalised vectors (scale-free, since
            vision features and LM states differ in norm); "infonce" = for each (k, p) the
            matching sample must beat the other samples of the batch, which penalises latents
            that are identical across inputs (the collapse reported for published
            latent-visual reasoning models).
        mask: (B,) bool, samples that have a target; others are left out.

    Returns:
        scalar loss.
    """
    target = target.detach().to(pred.dtype)
    if mask is not None:
        pred, target = pred[mask], target[mask]
    if pred.shape[0] == 0:
        return pred.sum() * 0.0
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(pred, target, dim=-1)).mean()
    if kind == "mse":
        return F.mse_loss(F.normalize(pred, dim=-1), F.normalize(target, dim=-1))
    if kind == "infonce":
        b, k, p, d = pred.shape
        q = F.normalize(pred, dim=-1).permute(1, 2, 0, 3).reshape(k * p, b, d)  # (KP, B, D)
        t = F.normalize(target, dim=-1).permute(1, 2, 0, 3).reshape(k * p, b, d)
        logits = q @ t.transpose(1, 2) / temperature  # (KP, B, B): sample i vs target j
        labels = torch.arange(b, device=pred.device).expand(k * p, b)
        return F.cross_entropy(logits.reshape(-1, b), labels.reshape(-1))
    raise ValueError(f"unknown align loss {kind!r} (cosine, mse, infonce)")


def cosine_agreement(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cosine between latents and targets (a logged diagnostic, no grad)."""
    with torch.no_grad():
        return F.cosine_similarity(pred.float(), target.float(), dim=-1).mean()


class Projector(nn.Module):
    """Maps latent states (D_h) to ``per_step`` target vectors (D_t each).

    Identity when widths match and one target per step (``mode="auto"``), so the default
    STORM setting aligns the raw hidden states as in Mirage/LVR; a linear map otherwise.
    """

    def __init__(self, hidden: int, target: int, per_step: int = 1, mode: str = "auto"):
        super().__init__()
        self.per_step, self.target = per_step, target
        need = hidden != target or per_step > 1
        if mode == "none" and need:
            raise ValueError(
                f"align.projector=none but latent width {hidden} != target width {target} "
                f"x {per_step} per step"
            )
        self.proj = nn.Linear(hidden, target * per_step) if mode == "linear" or (mode == "auto" and need) else None
        # mean training target (K, P, D_t), subtracted from targets before alignment; zeros
        # (no centring) until ``set_center``. Saved with the projector.
        self.register_buffer("target_center", torch.zeros(1, per_step, target))

    def set_center(self, center: torch.Tensor) -> None:
        """Use ``center`` (K, P, D_t) as the mean target to subtract (``center_targets``)."""
        self.target_center = center.detach().to(self.target_center)

    def load_saved(self, state: dict[str, torch.Tensor]) -> None:
        """Load a saved projector (its centre may have another K than the fresh buffer)."""
        if "target_center" in state:
            self.target_center = state["target_center"].clone().to(self.target_center)
        else:  # saved before centring existed: it was trained on uncentred targets
            self.target_center = torch.zeros_like(self.target_center)
            state = {**state, "target_center": self.target_center}
        self.load_state_dict(state)

    def center_targets(self, targets: torch.Tensor) -> torch.Tensor:
        """(B, K, P, D_t) targets minus the mean training target."""
        return targets - self.target_center

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, K, D_h) -> (B, K, P, D_t)."""
        x = latents if self.proj is None else self.proj(latents)
        return x.reshape(*latents.shape[:2], self.per_step, self.target)
