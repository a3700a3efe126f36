"""iBOT patch-level loss: the student predicts the teacher's targets at masked patch positions only."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_token_weights(masks: torch.Tensor) -> torch.Tensor:
    """Weight of every masked token [M] = 1 / (masked tokens in its image), from masks [B, N] bool."""
    per_image = 1.0 / masks.sum(dim=-1, keepdim=True).clamp(min=1).float()
    return per_image.expand_as(masks)[masks]


def ibot_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    weights: torch.Tensor,
    n_images: int,
    student_temp: float = 0.1,
) -> torch.Tensor:
    """Mean over images of the mean CE over their masked tokens; logits/probs [M, K] of masked tokens only.

    `weights` [M] come from `masked_token_weights`; images without masked tokens count as zero in the
    mean over `n_images` (as in iBOT / DINOv2, so the loss scale follows the masking probability).
    """
    ce = -(teacher_probs.float() * F.log_softmax(student_logits.float() / student_temp, dim=-1)).sum(dim=-1)
    return (ce * weights).sum() / n_images
