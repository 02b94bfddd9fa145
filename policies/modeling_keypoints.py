"""The keypoint head: spatial softmax over the patch-token grid, then the CortexBench MLP.

A linear map turns every patch token into `keypoints` scores; a softmax over the grid (with a
learned temperature) makes each a probability map whose mean position (x, y in [-1, 1]) is one
keypoint. With several cameras (their grids side by side) each camera has its own maps over its
own grid (`per_view`): maps shared by the cameras split their mass between the images and give
an average of two positions. The maps start sharp (`temperature` 0.1): at temperature 1 the
softmax over these tokens starts near uniform and, trained by behaviour cloning, stayed so (a
median 81 of 128 patches under a map on pick_place). With `values` > 0 each map also pools that
many linear read-outs of the tokens under it (attention pooling): a patch is 16 pixels wide, and
where inside it an object sits is in the token's content, not in the grid position. It is a few
thousand parameters in front of the MLP, so it trains on cached features as fast as the
CortexBench head.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .configuration_keypoints import KeypointsConfig
from .modeling_cortexbench import CortexBenchHead


class SpatialSoftmax(nn.Module):
    """`keypoints` heat maps per view over a grid of `views` cameras' patch grids side by side
    (h, views * w). With `views` > 1 every camera has its own maps, each normalised over that
    camera's grid alone, and x runs over [-1, 1] within each camera."""

    def __init__(
        self,
        in_dim: int,
        keypoints: int,
        grid: tuple[int, int],
        values: int = 0,
        views: int = 1,
        temperature: float = 1.0,
    ):
        super().__init__()
        h, w = grid
        if w % views:
            raise ValueError(f"a grid {h}x{w} does not hold {views} views of one width")
        self.keypoints, self.values, self.views = keypoints, values, views
        # one row block per view: view v's tokens meet only rows v*K:(v+1)*K
        self.score = nn.Linear(in_dim, views * keypoints)
        self.value = nn.Linear(in_dim, views * keypoints * values) if values else None
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w // views), indexing="ij")
        self.register_buffer("pos", torch.stack([xs.flatten(), ys.flatten()], -1), persistent=False)  # (h*w', 2)

    @property
    def out_dim(self) -> int:
        return self.views * self.keypoints * (2 + self.values)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """(N, h, views * w, D) -> (N, views * keypoints * (2 + values)): the expected x, y of
        every heat map (and the tokens' values pooled under it), view by view."""
        if self.views == 1:
            return self._maps(patches.flatten(1, 2), 0)
        w = patches.shape[2] // self.views
        views = [patches[:, :, v * w : (v + 1) * w].flatten(1, 2) for v in range(self.views)]
        return torch.cat([self._maps(tokens, v) for v, tokens in enumerate(views)], dim=1)

    def attention(self, tokens: torch.Tensor, view: int = 0) -> torch.Tensor:
        """(N, h*w, D) tokens of one view -> (N, h*w, K): that view's heat maps."""
        rows = slice(view * self.keypoints, (view + 1) * self.keypoints)
        # the temperature scales the score map's weights, not its (N, h*w, K) output: the same
        # scores, and the division and its backward over every token are gone (a fifth of the step)
        inv_temperature = (-self.log_temperature).exp()
        scores = F.linear(tokens, self.score.weight[rows] * inv_temperature, self.score.bias[rows] * inv_temperature)
        return scores.softmax(dim=1)

    def _maps(self, tokens: torch.Tensor, view: int) -> torch.Tensor:
        attention = self.attention(tokens, view)  # (N, h*w, K)
        out = torch.einsum("npk,pc->nkc", attention, self.pos)
        if self.value is not None:
            rows = slice(view * self.keypoints * self.values, (view + 1) * self.keypoints * self.values)
            values = F.linear(tokens, self.value.weight[rows], self.value.bias[rows])
            values = values.unflatten(-1, (self.keypoints, self.values))  # (N, h*w, K, V)
            out = torch.cat([out, torch.einsum("npk,npkv->nkv", attention, values)], dim=-1)
        return out.flatten(1)


class KeypointsHead(CortexBenchHead):
    inputs = ("patches",)
    config: KeypointsConfig

    def build_frame_encoder(self, feature_dim: int, grid: tuple[int, int]) -> int:
        views = self.views if self.config.per_view else 1
        self.keypoints = SpatialSoftmax(
            feature_dim, self.config.keypoints, grid, self.config.values, views, self.config.temperature
        )
        return self.keypoints.out_dim

    def frame_codes(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """features["patches"] (..., h, w, D) -> (..., views * keypoints * (2 + values))."""
        patches = features["patches"]
        lead = patches.shape[:-3]
        return self.keypoints(patches.reshape(-1, *patches.shape[-3:]).float()).unflatten(0, lead)
