"""The keypoint head: spatial softmax over the patch-token grid, then the CortexBench MLP.

A linear map turns every patch token into `keypoints` scores; a softmax over the grid (with a
learned temperature) makes each a probability map whose mean position (x, y in [-1, 1]) is one
keypoint. With `values` > 0 each map also pools that many linear read-outs of the tokens under
it (attention pooling): a patch is 16 pixels wide, and where inside it an object sits is in the
token's content, not in the grid position. It is a few thousand parameters in front of the MLP,
so it trains on cached features as fast as the CortexBench head.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .configuration_keypoints import KeypointsConfig
from .modeling_cortexbench import CortexBenchHead


class SpatialSoftmax(nn.Module):
    def __init__(self, in_dim: int, keypoints: int, grid: tuple[int, int], values: int = 0):
        super().__init__()
        self.keypoints, self.values = keypoints, values
        self.score = nn.Linear(in_dim, keypoints)
        self.value = nn.Linear(in_dim, keypoints * values) if values else None
        self.log_temperature = nn.Parameter(torch.zeros(()))
        h, w = grid
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        self.register_buffer("pos", torch.stack([xs.flatten(), ys.flatten()], -1), persistent=False)  # (h*w, 2)

    @property
    def out_dim(self) -> int:
        return self.keypoints * (2 + self.values)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """(N, h, w, D) -> (N, keypoints * (2 + values)): the expected x, y of every heat map
        (and the tokens' values pooled under it)."""
        tokens = patches.flatten(1, 2)
        # the temperature scales the score map's weights, not its (N, h*w, K) output: the same
        # scores, and the division and its backward over every token are gone (a fifth of the step)
        inv_temperature = (-self.log_temperature).exp()
        scores = F.linear(tokens, self.score.weight * inv_temperature, self.score.bias * inv_temperature)
        attention = scores.softmax(dim=1)  # (N, h*w, K)
        out = torch.einsum("npk,pc->nkc", attention, self.pos)
        if self.value is not None:
            values = self.value(tokens).unflatten(-1, (self.keypoints, self.values))  # (N, h*w, K, V)
            out = torch.cat([out, torch.einsum("npk,npkv->nkv", attention, values)], dim=-1)
        return out.flatten(1)


class KeypointsHead(CortexBenchHead):
    inputs = ("patches",)
    config: KeypointsConfig

    def build_frame_encoder(self, feature_dim: int, grid: tuple[int, int]) -> int:
        self.keypoints = SpatialSoftmax(feature_dim, self.config.keypoints, grid, self.config.values)
        return self.keypoints.out_dim

    def frame_codes(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """features["patches"] (B, T, h, w, D) -> (B, T, 2 * keypoints)."""
        patches = features["patches"]
        return self.keypoints(patches.flatten(0, 1).float()).unflatten(0, patches.shape[:2])
