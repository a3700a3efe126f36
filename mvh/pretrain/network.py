"""The student/teacher network of DINOv2 (backbone + DINO head + iBOT head), its EMA and its objective."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mvh.pretrain.dino_loss import TeacherCentering, dino_loss
from mvh.pretrain.heads import DINOHead
from mvh.pretrain.ibot_loss import ibot_loss, masked_token_weights
from mvh.pretrain.koleo_loss import koleo_loss


class SSLNetwork(nn.Module):
    """Backbone + DINO head + iBOT head; state-dict keys `backbone.*`, `dino_head.*`, `ibot_head.*`."""

    def __init__(self, backbone: nn.Module, dino_head: nn.Module, ibot_head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.dino_head = dino_head
        self.ibot_head = ibot_head

    def forward(
        self, global_crops: torch.Tensor, local_crops: torch.Tensor | None, masks: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """Student pass: cls tokens/logits of all crops [(2+n)*B, .], iBOT logits of masked tokens [M, K]."""
        out = self.backbone.forward_features(global_crops, masks=masks)
        cls = out["x_norm_clstoken"]
        n_global_images = cls.shape[0]
        if local_crops is not None and local_crops.numel():
            cls = torch.cat([cls, self.backbone.forward_features(local_crops)["x_norm_clstoken"]])
        result = {"cls": cls[:n_global_images], "dino_logits": self.dino_head(cls)}
        if masks is not None:
            result["ibot_logits"] = self.ibot_head(out["x_norm_patchtokens"][masks])
        return result

    @torch.no_grad()
    def teacher_forward(
        self, global_crops: torch.Tensor, masks: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher pass on unmasked global crops: DINO logits [2B, K] and iBOT logits at `masks` [M, K]."""
        out = self.backbone.forward_features(global_crops)
        dino_logits = self.dino_head(out["x_norm_clstoken"])
        ibot_logits = None if masks is None else self.ibot_head(out["x_norm_patchtokens"][masks])
        return dino_logits, ibot_logits


def build_network(
    backbone: nn.Module,
    prototypes: int = 65536,
    ibot_prototypes: int | None = None,
    hidden_dim: int = 2048,
    bottleneck_dim: int = 256,
    n_layers: int = 3,
    learn_last_layer_norm: bool = True,
) -> SSLNetwork:
    """Wrap a backbone exposing `forward_features` and `embed_dim` with freshly initialised heads."""
    dim = int(backbone.embed_dim)
    head = dict(hidden_dim=hidden_dim, bottleneck_dim=bottleneck_dim, n_layers=n_layers)
    return SSLNetwork(
        backbone,
        DINOHead(dim, prototypes, learn_norm=learn_last_layer_norm, **head),
        DINOHead(dim, ibot_prototypes or prototypes, learn_norm=learn_last_layer_norm, **head),
    )


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter.

    Sharded (FSDP) parameters are updated on this rank's shards: student and teacher are sharded alike,
    so each rank's local pieces line up and no gathering is needed (as DINOv2's FSDP `update_teacher`).
    """
    from torch.distributed.tensor import DTensor

    def local(p: torch.Tensor) -> torch.Tensor:
        return p.to_local() if isinstance(p, DTensor) else p

    t_params = [local(p) for p in teacher.parameters()]
    s_params = [local(p.detach()) for p in student.parameters()]
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1 - momentum)


def param_groups(
    network: SSLNetwork, patch_embed_lr_mult: float = 0.2, wd_exempt_ssm: bool = False
) -> list[dict[str, Any]]:
    """AdamW groups as DINOv2's `get_params_groups_with_decay` (layer-wise decay 1.0, the authors' value).

    No weight decay on names ending in `.bias` or containing `norm` or `gamma`; everything else is
    decayed, including the SSM's `A_log` and `D` and the prototypes' `weight_g`. Names containing
    `patch_embed` get `patch_embed_lr_mult` times the lr; `last_layer` parameters follow the last-layer
    lr schedule (frozen in the first epoch). `wd_exempt_ssm` also exempts `A_log` and `D` (Mamba's habit).
    """
    groups: dict[tuple[float, float, bool], list[nn.Parameter]] = {}
    for name, param in network.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = name.endswith(".bias") or "norm" in name or "gamma" in name
        if wd_exempt_ssm and (name.endswith(".A_log") or name.endswith(".D")):
            no_decay = True
        lr_multiplier = patch_embed_lr_mult if "patch_embed" in name else 1.0
        key = (lr_multiplier, 0.0 if no_decay else 1.0, "last_layer" in name)
        groups.setdefault(key, []).append(param)
    return [
        {"params": params, "lr_multiplier": lr_mult, "wd_multiplier": wd_mult, "last_layer": last_layer}
        for (lr_mult, wd_mult, last_layer), params in sorted(groups.items())
    ]


@dataclass
class StepOutput:
    """Loss terms of one step (python floats) and the total loss tensor."""

    total: torch.Tensor
    terms: dict[str, float]


def compute_losses(
    student: nn.Module,
    teacher: SSLNetwork,
    global_crops: torch.Tensor,
    local_crops: torch.Tensor | None,
    masks: torch.Tensor | None,
    teacher_temp: float,
    dino_centering: TeacherCentering,
    ibot_centering: TeacherCentering,
    student_temp: float = 0.1,
    dino_weight: float = 1.0,
    ibot_weight: float = 1.0,
    koleo_weight: float = 0.1,
) -> StepOutput:
    """The DINOv2 objective on one batch; global crops [2B, 3, G, G] crop-major, masks [2B, N] or None."""
    n_global_images = global_crops.shape[0]
    batch = n_global_images // 2
    t_dino_logits, t_ibot_logits = teacher.teacher_forward(global_crops, masks)
    t_dino = dino_centering(t_dino_logits, teacher_temp).view(2, batch, -1)
    out = student(global_crops, local_crops, masks)
    s_dino = out["dino_logits"].view(-1, batch, out["dino_logits"].shape[-1])
    loss_dino = dino_loss(s_dino, t_dino, student_temp)
    loss_koleo = sum(koleo_loss(c) for c in out["cls"].chunk(2))
    total = dino_weight * loss_dino + koleo_weight * loss_koleo
    terms = {"dino": float(loss_dino.detach()), "koleo": float(loss_koleo.detach())}
    if masks is not None and t_ibot_logits is not None:
        t_ibot = ibot_centering(t_ibot_logits, teacher_temp)
        loss_ibot = ibot_loss(
            out["ibot_logits"], t_ibot, masked_token_weights(masks), n_global_images, student_temp
        )
        total = total + ibot_weight * loss_ibot
        terms["ibot"] = float(loss_ibot.detach())
    terms["total"] = float(total.detach())
    return StepOutput(total=total, terms=terms)
