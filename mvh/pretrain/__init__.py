"""DINOv2-style self-supervised pretraining of MV_Hybrid and the ViT baselines."""
