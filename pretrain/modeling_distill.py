"""Distillation: a student encoder learns to reproduce a frozen teacher's features.

As in the official code: the teacher sees the whole image and gives its last block's tokens
before its final norm; the student sees its class tokens and the visible patches of a grid
mask (ratio 0.5 by default), applies its final norm, and a projector Linear-LN-GELU-Linear
maps it to the teacher's width. The loss is the mean of (1 - cosine) over class tokens and
(1 - cosine) over the visible patch tokens, averaged. Only the student is exported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pixio_robot.encoder import PixioViT

from .modeling_pixio import encode_visible, gather_tokens, grid_mask


@dataclass
class DistillOutput:
    loss: torch.Tensor
    loss_cls: torch.Tensor
    loss_patch: torch.Tensor
    ids_keep: torch.Tensor


class DistillModel(nn.Module):
    """The trainable part: student encoder + projector (the teacher stays outside)."""

    def __init__(self, student: PixioViT, teacher_dim: int, image_size: int, mask_grid: int, mask_ratio: float):
        super().__init__()
        self.encoder = student
        self.projector = nn.Sequential(
            nn.Linear(student.embed_dim, teacher_dim),
            nn.LayerNorm(teacher_dim),
            nn.GELU(),
            nn.Linear(teacher_dim, teacher_dim),
        )
        for m in self.projector.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        h = image_size // student.patch_size
        self.grid_size = (h, h)
        self.mask_grid = mask_grid
        self.num_cells = (h // mask_grid) ** 2
        self.n_keep_cells = int(self.num_cells * (1 - mask_ratio))

    def forward(self, images: torch.Tensor, noise: torch.Tensor, teacher_tokens: torch.Tensor) -> DistillOutput:
        """teacher_tokens: (B, n_cls + h*w, D_teacher), the teacher's last block before its norm."""
        n = self.encoder.n_cls_tokens
        ids_keep, _ = grid_mask(noise, *self.grid_size, self.mask_grid, self.n_keep_cells)
        s = self.projector(encode_visible(self.encoder, images, ids_keep)).float()
        t = teacher_tokens.float()
        loss_cls = 1 - F.cosine_similarity(s[:, :n], t[:, :n], dim=-1).mean()
        loss_patch = 1 - F.cosine_similarity(s[:, n:], gather_tokens(t[:, n:], ids_keep), dim=-1).mean()
        return DistillOutput((loss_cls + loss_patch) / 2, loss_cls, loss_patch, ids_keep)


@torch.no_grad()
def teacher_tokens(teacher: PixioViT, images: torch.Tensor) -> torch.Tensor:
    """The teacher's last-block tokens before its final norm, class tokens first."""
    out = teacher.features(images, -1, norm=False, raw=True)[0]
    return torch.cat([out.cls_raw, out.patches_raw.flatten(1, 2)], dim=1)
