"""Reading pre-training and distillation checkpoints back as modules.

The checkpoints themselves are the harness's (`pixio_robot.harness`: `checkpoints/step-*.pt`,
atomic, loadable with `torch.load(weights_only=True)`); pre-training adds the encoder's
architecture (`encoder`, JSON) and the data position (`data`, JSON) to each.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pixio_robot.encoder import PixioViT
from pixio_robot.errors import PixioError
from pixio_robot.harness import load_checkpoint

from .configuration_pixio import ModelConfig
from .modeling_distill import DistillModel
from .modeling_pixio import PixioPretrainModel


def load_trained(path: str | Path) -> tuple[dict, torch.nn.Module]:
    """(checkpoint, trained module in eval mode) from a run folder or a step-*.pt file."""
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") not in ("pretrain", "distill"):
        raise PixioError(f"{ckpt['path']}: a {ckpt.get('kind')} checkpoint, not one of pretrain or distill")
    cfg = json.loads(ckpt["config"])
    encoder = PixioViT(**json.loads(ckpt["encoder"]))
    if ckpt["kind"] == "pretrain":
        model = PixioPretrainModel(ModelConfig(**cfg["model"]), encoder)
    else:
        s = cfg["student"]
        teacher_dim = ckpt["model"]["projector.3.weight"].shape[0]
        model = DistillModel(encoder, teacher_dim, s["image_size"], s["mask_grid"], s["mask_ratio"])
    model.load_state_dict(ckpt["model"])
    return ckpt, model.eval()
