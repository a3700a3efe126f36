"""Projection heads: MLP -> bottleneck -> L2-normalised -> weight-normalised prototypes (DINO/iBOT)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with rows `weight_g * weight_v / |weight_v|` (torch's weight_norm, dim 0).

    `weight_g` starts at 1 and is trained (and weight-decayed) as in DINOv2's `dino_head.py`, which wraps
    the layer in `weight_norm` and only fills g with 1; `learn_norm=False` freezes it at 1 (DINO v1).
    """

    def __init__(self, in_features: int, out_features: int, learn_norm: bool = True) -> None:
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_g = nn.Parameter(torch.ones(out_features, 1), requires_grad=learn_norm)
        nn.init.trunc_normal_(self.weight_v, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., in] -> [..., out] logits."""
        weight = self.weight_g * F.normalize(self.weight_v, dim=1)
        return F.linear(x, weight.to(x.dtype))


class DINOHead(nn.Module):
    """MLP (`n_layers` linear layers, GELU) to a `bottleneck_dim` space, then `out_dim` prototypes."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        n_layers: int = 3,
        learn_norm: bool = True,
    ) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (max(n_layers, 1) - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            layers.append(nn.Linear(d_in, d_out))
            if i < len(dims) - 2:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, learn_norm=learn_norm)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens [..., in_dim] -> prototype logits [..., out_dim]."""
        z = self.mlp(x)
        z = F.normalize(z, dim=-1, p=2, eps=1e-6 if z.dtype == torch.float16 else 1e-12)  # DINOv2's eps
        return self.last_layer(z)
