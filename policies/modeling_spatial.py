"""The spatial head: a small CNN per frame over the patch-token grid, then the CortexBench MLP
(the frame codes fused over the history and the last layer initialised as that head does).

Pooling to one vector (the CortexBench head) throws away where things are; Theia's protocol
keeps the grid and lets a few convolutions learn what to keep of it.
"""

from __future__ import annotations

import torch
from torch import nn

from .configuration_spatial import SpatialConfig
from .modeling_cortexbench import CortexBenchHead


class SpatialHead(CortexBenchHead):
    inputs = ("patches",)
    config: SpatialConfig

    def build_frame_encoder(self, feature_dim: int, grid: tuple[int, int]) -> int:
        reduce, mid, out = self.config.channels
        stride = 2 if min(grid) >= 8 else 1  # keep at least a 4x4 grid
        self.cnn = nn.Sequential(
            nn.Conv2d(feature_dim, reduce, 1),
            nn.ReLU(),
            nn.Conv2d(reduce, mid, 3, stride=stride, padding=1),
            nn.ReLU(),
            nn.Conv2d(mid, out, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.cnn(torch.zeros(1, feature_dim, *grid)).shape[1]
        self.frame_code = nn.Sequential(nn.Linear(flat, self.config.frame_dim), nn.ReLU())
        return self.config.frame_dim

    def frame_codes(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """features["patches"] (..., h, w, D) -> (..., frame_dim)."""
        patches = features["patches"]
        codes = self.frame_code(self.cnn(patches.reshape(-1, *patches.shape[-3:]).permute(0, 3, 1, 2)))
        return codes.unflatten(0, patches.shape[:-3])
