"""What every registered backbone is: the `Backbone` protocol the extractor, checkpoint loader and
pretraining rely on, written down instead of found by `getattr`.

Shapes: B images of 3 x H x W, N patch tokens, R register tokens, D the token width; `output_dim` is the
width of `forward`'s embedding (MV_Hybrid: 2 D, cls and mean patch token; ViTs: D, the cls token).
"""

from __future__ import annotations

from typing import Protocol, TypedDict, runtime_checkable

from torch import Tensor


class Features(TypedDict, total=False):
    """`forward_features` output, DINOv2's names: normalised tokens after the last block."""

    x_norm_clstoken: Tensor  # [B, D]
    x_norm_patchtokens: Tensor  # [B, N, D]
    x_norm_regtokens: Tensor  # [B, R, D]; only backbones with register tokens
    masks: Tensor | None  # the bool [B, N] masks given (iBOT pretraining), else None


@runtime_checkable
class Backbone(Protocol):
    """A tile encoder: embeddings for the store, token features for pretraining, one checkpoint adapter."""

    output_dim: int

    def forward(self, x: Tensor) -> Tensor:
        """x [B, 3, H, W] normalised -> the inference embedding [B, output_dim]."""
        ...

    def forward_features(self, x: Tensor, masks: Tensor | None = None) -> Features:
        """x [B, 3, H, W] (masks bool [B, N]) -> normalised cls, patch (and register) tokens, masks."""
        ...

    def adapt_state_dict(self, state_dict: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
        """A foreign checkpoint's keys renamed to this backbone's, and one note per kind of change."""
        ...
