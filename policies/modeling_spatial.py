"""The spatial head: a small CNN per frame over the patch-token grid, then the CortexBench MLP
(the frame codes fused over the history and the last layer initialised as that head does).

Pooling to one vector (the CortexBench head) throws away where things are; Theia's protocol
keeps the grid and lets a few convolutions learn what to keep of it.
"""

from __future__ import annotations

import torch
from torch import nn

from .configuration_spatial import SpatialConfig
from .modeling_cortexbench import BatchNormMLP, fuse_history, masked_loss


class SpatialHead(nn.Module):
    inputs = ("patches",)

    def __init__(self, config: SpatialConfig, feature_dim: int, grid: tuple[int, int], state_dim: int, action_dim: int):
        super().__init__()
        self.config = config
        self.action_dim = action_dim
        reduce, mid, out = config.channels
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
        self.frame_code = nn.Sequential(nn.Linear(flat, config.frame_dim), nn.ReLU())
        in_dim = config.history * config.frame_dim + (state_dim if config.use_state else 0)
        self.net = BatchNormMLP(
            in_dim, list(config.hidden), config.chunk_size * action_dim, config.dropout, config.last_layer_scale
        )

    def forward(self, features: dict[str, torch.Tensor], state: torch.Tensor) -> torch.Tensor:
        """features["patches"] (B, T, h, w, D), state (B, S) -> actions (B, k, A)."""
        patches = features["patches"]
        b = patches.shape[0]
        codes = self.frame_code(self.cnn(patches.flatten(0, 1).permute(0, 3, 1, 2)))
        x = fuse_history(codes.unflatten(0, (b, -1)), self.config.fusion)
        if self.config.use_state:
            x = torch.cat([x, state], dim=1)
        return self.net(x).unflatten(1, (self.config.chunk_size, self.action_dim))

    def loss(self, pred: torch.Tensor, target: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        return masked_loss((pred - target).square(), pad)
