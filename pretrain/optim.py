"""AdamW for pre-training: the harness's parameter groups (timm's rule, as in MAE and the
official Pixio code) and the fused kernel where the device has one."""

from __future__ import annotations

import torch
from torch import nn

from pixio_robot.harness import param_groups

from .configuration_pixio import OptimConfig


def make_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    fused = cfg.fused and device.type in ("cpu", "cuda")
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=0.0, betas=tuple(cfg.betas), fused=fused or None)
