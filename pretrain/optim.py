"""AdamW with the MAE/Pixio parameter groups, and the warm-up + cosine learning rate."""

from __future__ import annotations

import math

import torch
from torch import nn

from .configuration_pixio import OptimConfig, ScheduleConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and norm weights (every parameter with one dimension or
    named *.bias); decay on everything else, as in MAE and the official Pixio code."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def make_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    fused = cfg.fused and device.type in ("cpu", "cuda")
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=0.0, betas=tuple(cfg.betas), fused=fused or None)


def lr_at(step: int, peak_lr: float, schedule: ScheduleConfig) -> float:
    """Linear warm-up from 0 over `warmup_steps`, then half a cosine down to `min_lr` at
    `steps`; evaluated every optimizer step."""
    if step < schedule.warmup_steps:
        return peak_lr * step / schedule.warmup_steps
    t = (step - schedule.warmup_steps) / max(1, schedule.steps - schedule.warmup_steps)
    return schedule.min_lr + (peak_lr - schedule.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
