"""The action-chunking transformer head (ACT without its CVAE) over frozen patch tokens.

Encoder input: the patch tokens of the last `history` frames (projected to `dim`, plus a
learned position per patch and per frame) and one state token. The decoder's `chunk_size`
learned queries attend to the encoder's output and each reads out one future action. At
inference LeRobot's `ACTTemporalEnsembler` averages every chunk's prediction for the current step.
"""

from __future__ import annotations

import torch
from torch import nn

from .configuration_chunking import ChunkingConfig
from .modeling_cortexbench import masked_loss


class ChunkingHead(nn.Module):
    inputs = ("patches",)

    def __init__(
        self,
        config: ChunkingConfig,
        feature_dim: int,
        grid: tuple[int, int],
        state_dim: int,
        action_dim: int,
        views: int = 1,  # (its attention reads the joined grid with learned positions: no split needed)
    ):
        super().__init__()
        self.config = config
        self.action_dim = action_dim
        d = config.dim
        if config.token_grid > 0:  # fewer tokens: attention cost falls with their square
            grid = (min(grid[0], config.token_grid), min(grid[1], config.token_grid))
            self.pool = nn.AdaptiveAvgPool2d(grid)
        else:
            self.pool = None
        n_patches = grid[0] * grid[1]
        self.patch_proj = nn.Linear(feature_dim, d)
        self.patch_pos = nn.Parameter(torch.zeros(1, 1, n_patches, d))
        self.frame_pos = nn.Parameter(torch.zeros(1, config.history, 1, d))
        self.state_proj = nn.Linear(state_dim, d) if config.use_state else None
        self.state_pos = nn.Parameter(torch.zeros(1, 1, d))
        self.queries = nn.Parameter(torch.zeros(1, config.chunk_size, d))

        def block(cls):
            return cls(d, config.heads, config.ffn_dim, config.dropout, batch_first=True, norm_first=True)

        self.encoder = nn.TransformerEncoder(
            block(nn.TransformerEncoderLayer), config.encoder_layers, norm=nn.LayerNorm(d), enable_nested_tensor=False
        )
        self.decoder = nn.TransformerDecoder(
            block(nn.TransformerDecoderLayer), config.decoder_layers, norm=nn.LayerNorm(d)
        )
        self.action_out = nn.Linear(d, action_dim)
        for p in (self.patch_pos, self.frame_pos, self.state_pos, self.queries):
            nn.init.trunc_normal_(p, std=0.02)

    def forward(self, features: dict[str, torch.Tensor], state: torch.Tensor) -> torch.Tensor:
        """features["patches"] (B, T, h, w, D), state (B, S) -> actions (B, k, A)."""
        patches = features["patches"]
        b, t = patches.shape[:2]
        if self.pool is not None:
            patches = self.pool(patches.flatten(0, 1).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).unflatten(0, (b, t))
        tokens = self.patch_proj(patches.flatten(2, 3)) + self.patch_pos + self.frame_pos  # (B, T, h*w, d)
        tokens = tokens.flatten(1, 2)
        if self.state_proj is not None:
            tokens = torch.cat([self.state_proj(state)[:, None] + self.state_pos, tokens], dim=1)
        memory = self.encoder(tokens)
        out = self.decoder(self.queries.expand(b, -1, -1), memory)
        return self.action_out(out)

    def loss(self, pred: torch.Tensor, target: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        return masked_loss((pred - target).abs(), pad)
