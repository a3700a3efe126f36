"""Backbones: registry of MV_Hybrid, the paper's ViT baselines, public pathology ViTs; checkpoints."""

from mvh.extractor.models import mv_hybrid as _mv_hybrid  # noqa: F401  (registers its variants)
from mvh.extractor.models import vit as _vit  # noqa: F401  (registers its variants)
from mvh.extractor.models.checkpoint import WeightsInfo, load_weights, require_weights
from mvh.extractor.models.registry import (
    ModelInfo,
    canonical_name,
    create_model,
    get_model_info,
    list_aliases,
    list_models,
    register_model,
)

__all__ = [
    "ModelInfo",
    "WeightsInfo",
    "canonical_name",
    "create_model",
    "get_model_info",
    "list_aliases",
    "list_models",
    "load_weights",
    "register_model",
    "require_weights",
]
