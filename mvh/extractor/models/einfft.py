"""EinFFT channel mixer (SiMBA): block-diagonal complex MLP in the 2-D Fourier domain of (tokens, blocks)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class EinFFT(nn.Module):
    """fft2 over (token, channel-block) -> two complex block-diagonal layers -> softshrink -> ifft2 (real)."""

    def __init__(
        self, dim: int, num_blocks: int = 4, sparsity_threshold: float = 0.01, init_scale: float = 0.02
    ):
        super().__init__()
        if dim % num_blocks:
            raise ValueError(f"EinFFT dim {dim} must be divisible by num_blocks {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = dim // num_blocks
        self.sparsity_threshold = sparsity_threshold
        shape_w = (2, num_blocks, self.block_size, self.block_size)
        shape_b = (2, num_blocks, self.block_size)
        self.complex_weight_1 = nn.Parameter(torch.randn(shape_w) * init_scale)
        self.complex_weight_2 = nn.Parameter(torch.randn(shape_w) * init_scale)
        self.complex_bias_1 = nn.Parameter(torch.randn(shape_b) * init_scale)
        self.complex_bias_2 = nn.Parameter(torch.randn(shape_b) * init_scale)

    @staticmethod
    def _complex_layer(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """x [..., nb, bs] complex times the per-block complex matrix weight [2, nb, bs, bs] plus bias."""
        w = torch.complex(weight[0], weight[1])
        return torch.einsum("...bd,bdk->...bk", x, w) + torch.complex(bias[0], bias[1])

    def forward(self, x: Tensor) -> Tensor:
        """x [B, L, C] -> [B, L, C] float32 (FFTs and complex layers always run in float32)."""
        batch, length, channels = x.shape
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float().reshape(batch, length, self.num_blocks, self.block_size)
            x = torch.fft.fft2(x, dim=(1, 2), norm="ortho")
            x = self._complex_layer(x, self.complex_weight_1, self.complex_bias_1)
            x = torch.view_as_complex(F.relu(torch.view_as_real(x)))  # ReLU on real and imaginary parts
            x = self._complex_layer(x, self.complex_weight_2, self.complex_bias_2)
            x = torch.view_as_complex(F.softshrink(torch.view_as_real(x), lambd=self.sparsity_threshold))
            x = torch.fft.ifft2(x, dim=(1, 2), norm="ortho")
            return x.real.reshape(batch, length, channels)
