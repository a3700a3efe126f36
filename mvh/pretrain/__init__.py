"""DINOv2-style self-supervised pretraining of MV_Hybrid and the ViT baselines.

One concept per module: losses (dino_loss, ibot_loss, koleo_loss, sinkhorn), heads, augment, masking,
schedules, data, config, the training loop (train), FSDP sharding and sharded checkpoints (fsdp) and the
trained-vs-random proxy evaluation (evidence).
"""

from mvh.pretrain.config import PretrainConfig, load_config, save_config
from mvh.pretrain.evidence import Evidence, evidence_for_run, pretraining_evidence
from mvh.pretrain.train import run_pretrain
from mvh.pretrain.train_results import PretrainResult

__all__ = [
    "Evidence",
    "PretrainConfig",
    "PretrainResult",
    "evidence_for_run",
    "load_config",
    "pretraining_evidence",
    "run_pretrain",
    "save_config",
]
