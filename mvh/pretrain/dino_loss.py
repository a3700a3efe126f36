"""DINO image-level loss: cross-entropy between teacher targets and student predictions across crops."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mvh.pretrain.sinkhorn import sinkhorn_knopp


def cross_entropy_across_crops(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    student_temp: float,
    skip_same_view: bool,
) -> tuple[torch.Tensor, int]:
    """Sum over (student crop, teacher crop) pairs of the batch-mean CE; logits [S, B, K], probs [T, B, K].

    With `skip_same_view`, student crop i is not compared with teacher crop i (both are the same view).
    Returns the summed loss and the number of pairs.
    """
    log_p = F.log_softmax(student_logits.float() / student_temp, dim=-1)
    pair_ce = -torch.einsum("tbk,sbk->tsb", teacher_probs.float(), log_p).mean(dim=-1)  # [T, S]
    if skip_same_view:
        keep = ~torch.eye(pair_ce.shape[0], pair_ce.shape[1], dtype=torch.bool, device=pair_ce.device)
        return pair_ce[keep].sum(), int(keep.sum())
    return pair_ce.sum(), pair_ce.numel()


class TeacherCentering(nn.Module):
    """Teacher logits [B, K] -> targets [B, K]: Sinkhorn-Knopp (DINOv2) or softmax minus EMA centre (DINO)."""

    def __init__(self, out_dim: int, mode: str = "sinkhorn_knopp", center_momentum: float = 0.9) -> None:
        super().__init__()
        if mode not in ("sinkhorn_knopp", "softmax_center"):
            raise ValueError(f"centering must be 'sinkhorn_knopp' or 'softmax_center', got {mode!r}")
        self.mode = mode
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def forward(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Targets float32 [B, K] (rows sum to 1); the softmax variant then moves its centre."""
        if self.mode == "sinkhorn_knopp":
            return sinkhorn_knopp(teacher_logits, teacher_temp)
        probs = F.softmax((teacher_logits.float() - self.center) / teacher_temp, dim=-1)
        self.update_center(teacher_logits)
        return probs

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """EMA of the batch mean of teacher logits [B, K] (averaged over ranks)."""
        total = teacher_logits.float().sum(dim=0, keepdim=True)
        count = torch.tensor(float(teacher_logits.shape[0]), device=total.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
            dist.all_reduce(count)
        m = self.center_momentum
        self.center.mul_(m).add_(total / count, alpha=1 - m)


def dino_loss(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, student_temp: float = 0.1
) -> torch.Tensor:
    """DINO loss: mean CE over all (student crop, teacher global crop) pairs of different views.

    student_logits [S, B, K] with the global crops first (crop i of the student and of the teacher is the
    same view for i < T), teacher_probs [T, B, K].
    """
    total, n_pairs = cross_entropy_across_crops(
        student_logits, teacher_probs, student_temp, skip_same_view=True
    )
    return total / n_pairs
