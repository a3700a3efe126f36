"""KoLeo regulariser (Sablayrolles et al. 2018, used by DINOv2): spreads features over the sphere."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """-mean(log distance to the nearest neighbour) of the L2-normalised rows of `features` [B, D]."""
    x = F.normalize(features.float(), p=2, dim=-1, eps=eps)
    with torch.no_grad():
        similarity = x @ x.t()
        similarity.fill_diagonal_(-2.0)  # below any cosine: a row is never its own neighbour
        nearest = similarity.argmax(dim=1)
    distances = F.pairwise_distance(x, x[nearest], p=2, eps=eps)
    return -torch.log(distances + eps).mean()
