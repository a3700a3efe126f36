"""Gated attention multiple-instance learning (ABMIL, Ilse et al. 2018) for slide/patient-level survival.

A bag is the set of tile embeddings of one patient. Tiles are projected by a small MLP, scored by a
gated attention network (a = tanh(V h), g = sigmoid(U h), score = w^T (a * g)), the scores are
softmax-normalised over the bag, and the attention-weighted sum of the projected tiles goes to a head:
one risk output (Cox) or one hazard logit per time bin (discrete-time NLL).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GatedAttention(nn.Module):
    """Gated attention scores: h [..., L] -> unnormalised scores [...] (e.g. [B, N, L] -> [B, N])."""

    def __init__(self, in_dim: int, attn_dim: int) -> None:
        super().__init__()
        self.V = nn.Linear(in_dim, attn_dim)
        self.U = nn.Linear(in_dim, attn_dim)
        self.w = nn.Linear(attn_dim, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h [..., L] -> scores [...]."""
        return self.w(torch.tanh(self.V(h)) * torch.sigmoid(self.U(h))).squeeze(-1)


class ABMIL(nn.Module):
    """Gated attention MIL: bag [B, N, D] (+ mask [B, N]) -> (outputs [B, n_outputs], attention [B, N]).

    `n_outputs=1` gives a Cox log-risk; `n_outputs=K` gives K hazard logits for the NLL loss.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 256,
        attn_dim: int = 128,
        n_outputs: int = 1,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.n_outputs = n_outputs
        self.project = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.attention = GatedAttention(hidden_dim, attn_dim)
        self.head = nn.Linear(hidden_dim, n_outputs)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, N, D] or [N, D], mask [B, N] bool (True = real tile) -> (out [B, n_out], attention [B, N]).

        Padded tiles get zero attention; a single bag [N, D] is treated as B = 1.
        """
        if x.dim() == 2:
            x = x.unsqueeze(0)
            mask = None if mask is None else mask.reshape(1, -1)
        h = self.project(x)
        scores = self.attention(h)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        attention = F.softmax(scores, dim=1)
        pooled = torch.bmm(attention.unsqueeze(1), h).squeeze(1)
        return self.head(pooled), attention


    def forward_flat(
        self, x: torch.Tensor, bag: torch.Tensor, n_bags: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Bags concatenated without padding: x [T, D], bag [T] (bag index of each tile, 0..n_bags-1)
        -> (out [n_bags, n_out], attention [T], softmax within each bag).

        The same function as `forward` on the padded batch, without computing padded tiles (bags of
        uneven size waste most of a padded batch). Every bag needs at least one tile.
        """
        h = self.project(x)
        scores = self.attention(h)
        # Softmax per bag; subtracting each bag's max (a constant per bag) leaves it unchanged.
        peak = torch.full((n_bags,), float("-inf"), dtype=scores.dtype, device=scores.device)
        peak = peak.scatter_reduce(0, bag, scores.detach(), reduce="amax")
        weights = torch.exp(scores - peak[bag])
        total = torch.zeros(n_bags, dtype=scores.dtype, device=scores.device).index_add(0, bag, weights)
        attention = weights / total[bag]
        pooled = h.new_zeros((n_bags, h.shape[1])).index_add(0, bag, attention.unsqueeze(1) * h)
        return self.head(pooled), attention


def pad_bags(bags: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack bags [N_i, D] into a zero-padded batch [B, max N, D] and its mask [B, max N] (True = real)."""
    n_max = max(int(b.shape[0]) for b in bags)
    dim = int(bags[0].shape[1])
    batch = bags[0].new_zeros((len(bags), n_max, dim))
    mask = torch.zeros((len(bags), n_max), dtype=torch.bool, device=bags[0].device)
    for i, bag in enumerate(bags):
        batch[i, : bag.shape[0]] = bag
        mask[i, : bag.shape[0]] = True
    return batch, mask
