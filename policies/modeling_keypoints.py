"""The keypoint head: spatial softmax over the patch-token grid, then the CortexBench MLP.

A linear map turns every patch token into `keypoints` scores; a softmax over the grid (with a
learned temperature) makes each a probability map whose mean position (x, y in [-1, 1]) is one
keypoint. It is a few thousand parameters in front of the MLP, so it trains on cached features
as fast as the CortexBench head, and its output is position by construction.
"""

from __future__ import annotations

import torch
from torch import nn

from .configuration_keypoints import KeypointsConfig
from .modeling_cortexbench import BatchNormMLP, fuse_history, masked_loss


class SpatialSoftmax(nn.Module):
    def __init__(self, in_dim: int, keypoints: int, grid: tuple[int, int]):
        super().__init__()
        self.score = nn.Linear(in_dim, keypoints)
        self.log_temperature = nn.Parameter(torch.zeros(()))
        h, w = grid
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        self.register_buffer("pos", torch.stack([xs.flatten(), ys.flatten()], -1), persistent=False)  # (h*w, 2)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """(N, h, w, D) -> (N, 2 * keypoints): the expected x, y of every heat map."""
        scores = self.score(patches.flatten(1, 2)) / self.log_temperature.exp()  # (N, h*w, K)
        attention = scores.softmax(dim=1)
        return torch.einsum("npk,pc->nkc", attention, self.pos).flatten(1)


class KeypointsHead(nn.Module):
    inputs = ("patches",)

    def __init__(
        self, config: KeypointsConfig, feature_dim: int, grid: tuple[int, int], state_dim: int, action_dim: int
    ):
        super().__init__()
        self.config = config
        self.action_dim = action_dim
        self.keypoints = SpatialSoftmax(feature_dim, config.keypoints, grid)
        in_dim = config.history * 2 * config.keypoints + (state_dim if config.use_state else 0)
        self.net = BatchNormMLP(
            in_dim, list(config.hidden), config.chunk_size * action_dim, config.dropout, config.last_layer_scale
        )

    def forward(self, features: dict[str, torch.Tensor], state: torch.Tensor) -> torch.Tensor:
        """features["patches"] (B, T, h, w, D), state (B, S) -> actions (B, k, A)."""
        patches = features["patches"]
        b = patches.shape[0]
        codes = self.keypoints(patches.flatten(0, 1).float())
        x = fuse_history(codes.unflatten(0, (b, -1)), self.config.fusion)
        if self.config.use_state:
            x = torch.cat([x, state], dim=1)
        return self.net(x).unflatten(1, (self.config.chunk_size, self.action_dim))

    def loss(self, pred: torch.Tensor, target: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        return masked_loss((pred - target).square(), pad)
