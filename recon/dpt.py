"""The DPT decoder (Ranftl et al. 2021) shared by the depth heads and the reconstruction head.

Four token maps at the patch grid (h, w) are reassembled at 4x, 2x, 1x and 1/2x of it, fused
coarse to fine with residual conv units, and brought to 16x the grid: the full image for a
patch size of 16. The official Pixio depth head and MapAnything's dense head are this decoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _ResidualConv(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class _Fusion(nn.Module):
    """DPT's feature fusion: the coarser path plus a refined skip, refined, up 2x."""

    def __init__(self, c: int):
        super().__init__()
        self.skip, self.refine, self.out = _ResidualConv(c), _ResidualConv(c), nn.Conv2d(c, c, 1)

    def forward(self, path: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = path if skip is None else path + self.skip(skip)
        x = F.interpolate(self.refine(x), scale_factor=2, mode="bilinear", align_corners=True)
        return self.out(x)


class DPT(nn.Module):
    """4 maps (N, in_dim, h, w) -> (N, out_channels, 16 h, 16 w)."""

    def __init__(self, in_dim: int, features: int, channels: list[int], out_channels: int = 1):
        super().__init__()
        f, ch = features, channels
        self.project = nn.ModuleList([nn.Conv2d(in_dim, c, 1) for c in ch])
        self.resize = nn.ModuleList(
            [
                nn.ConvTranspose2d(ch[0], ch[0], 4, stride=4),
                nn.ConvTranspose2d(ch[1], ch[1], 2, stride=2),
                nn.Identity(),
                nn.Conv2d(ch[3], ch[3], 3, stride=2, padding=1),
            ]
        )
        self.to_features = nn.ModuleList([nn.Conv2d(c, f, 3, padding=1, bias=False) for c in ch])
        self.fusion = nn.ModuleList([_Fusion(f) for _ in ch])
        self.output = nn.Sequential(
            nn.Conv2d(f, f // 2, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(f // 2, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, out_channels, 1),
        )

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        stages = zip(self.project, self.resize, self.to_features, strict=True)
        layers = [conv(res(proj(x))) for x, (proj, res, conv) in zip(maps, stages, strict=True)]
        path = self.fusion[3](layers[3])
        for i in (2, 1, 0):  # an odd grid side leaves the coarser path one cell larger: crop it
            path = self.fusion[i](path[..., : layers[i].shape[-2], : layers[i].shape[-1]], layers[i])
        return self.output(path)
