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
from .modeling_cortexbench import CortexBenchHead


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


class KeypointsHead(CortexBenchHead):
    inputs = ("patches",)
    config: KeypointsConfig

    def build_frame_encoder(self, feature_dim: int, grid: tuple[int, int]) -> int:
        self.keypoints = SpatialSoftmax(feature_dim, self.config.keypoints, grid)
        return 2 * self.config.keypoints

    def frame_codes(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """features["patches"] (B, T, h, w, D) -> (B, T, 2 * keypoints)."""
        patches = features["patches"]
        return self.keypoints(patches.flatten(0, 1).float()).unflatten(0, patches.shape[:2])
