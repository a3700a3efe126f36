"""Sinkhorn-Knopp centring of teacher outputs (SwAV / DINOv2): equipartition over prototypes."""

from __future__ import annotations

import torch
import torch.distributed as dist


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce(t: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    if _distributed():
        dist.all_reduce(t, op=op)
    return t


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temperature: float, n_iterations: int = 3) -> torch.Tensor:
    """Teacher targets from logits [B, K]: rows sum to 1, columns to B/K (over all ranks), float32 [B, K]."""
    logits = logits.float()
    # A global shift changes nothing (everything is renormalised) and keeps exp from overflowing.
    shift = _all_reduce(logits.max().clone(), op=dist.ReduceOp.MAX)
    q = torch.exp((logits - shift) / temperature).t()  # [K, B]
    n_prototypes = q.shape[0]
    n_samples = _all_reduce(torch.tensor(float(q.shape[1]), device=q.device))
    q /= _all_reduce(q.sum())
    for _ in range(n_iterations):
        q /= _all_reduce(q.sum(dim=1, keepdim=True))  # each prototype gets 1/K of the mass
        q /= n_prototypes
        q /= q.sum(dim=0, keepdim=True)  # each sample gets 1/B of the mass
        q /= n_samples
    q *= n_samples
    return q.t()
