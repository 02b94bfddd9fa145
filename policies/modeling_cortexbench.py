"""The CortexBench head: fused global embeddings + state -> BatchNorm -> MLP -> action.

Inputs are normalised state and features; the output is the normalised action (the policy
around it, `modeling_pixio.py`, handles normalisation with the dataset's statistics).
"""

from __future__ import annotations

import torch
from torch import nn

from pixio_robot.errors import PixioError

from .configuration_cortexbench import CortexBenchConfig


class BatchNormMLP(nn.Module):
    """BatchNorm on the input, then Linear-ReLU(-Dropout) per hidden size, then Linear: the
    policy network of CortexBench (mjrl's `BatchNormMLP`)."""

    def __init__(self, in_dim: int, hidden: list[int], out_dim: int, dropout: float = 0.0, last_scale: float = 1.0):
        super().__init__()
        self.input_norm = nn.BatchNorm1d(in_dim)
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_dim, width), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            in_dim = width
        layers.append(nn.Linear(in_dim, out_dim))
        with torch.no_grad():  # eai-vc starts the policy near zero actions (scale 0.01)
            layers[-1].weight.mul_(last_scale)
            layers[-1].bias.mul_(last_scale)
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, last_hidden: bool = False):
        """The output; with `last_hidden`, (output, the last hidden layer's activations)."""
        *body, last = self.mlp  # (slicing the Sequential would build a new module every step)
        hidden = self.input_norm(x)
        for layer in body:
            hidden = layer(hidden)
        out = last(hidden)
        return (out, hidden) if last_hidden else out


def masked_loss(error: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
    """Mean of `error` (B, k, A) over the positions that are not padding (`pad` (B, k))."""
    if pad is None:
        return error.mean()
    keep = (~pad).unsqueeze(-1).to(error.dtype)
    return (error * keep).sum() / (keep.sum() * error.shape[-1]).clamp(min=1)


def fuse_history(codes: torch.Tensor, fusion: str) -> torch.Tensor:
    """(B, T, D) -> (B, T*D): FLARE's [c1 - c0, ..., c(T-1) - c(T-2), c(T-1)], or the frames."""
    if fusion == "flare" and codes.shape[1] > 1:
        codes = torch.cat([codes[:, 1:] - codes[:, :-1], codes[:, -1:]], dim=1)
    return codes.flatten(1)


class CortexBenchHead(nn.Module):
    """Per-frame codes (here the global embedding as it is) fused over the history, with the
    state, through the BatchNorm MLP. The patch-grid heads (`spatial`, `keypoints`) are this head
    with another frame code: they override `inputs`, `build_frame_encoder` and `frame_codes`."""

    inputs = ("global",)

    def __init__(
        self,
        config: CortexBenchConfig,
        feature_dim: int,
        grid: tuple[int, int],
        state_dim: int,
        action_dim: int,
        aux_dim: int = 0,
        views: int = 1,
    ):
        super().__init__()
        self.config = config
        self.action_dim, self.views = action_dim, views  # views: cameras side by side in the grid
        code_dim = self.build_frame_encoder(feature_dim, grid)
        in_dim = config.history * code_dim + (state_dim if config.use_state else 0)
        self.net = BatchNormMLP(
            in_dim, list(config.hidden), config.chunk_size * action_dim, config.dropout, config.last_layer_scale
        )
        # `aux_state`: the layer the actions are read from must also say where the objects are, a
        # dense target on every frame where the actions (clipped at full speed) say only which way
        self.aux = nn.Linear(config.hidden[-1] if config.hidden else in_dim, aux_dim) if aux_dim else None

    def build_frame_encoder(self, feature_dim: int, grid: tuple[int, int]) -> int:
        """Build what turns one frame's features into its code; return the code's size."""
        return feature_dim

    def frame_codes(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Codes (..., C) of frames whose features have leading shape (...): (B, T) for the
        history of every sample, or (U,) for distinct frames."""
        return features["global"]

    def fuse(self, codes: torch.Tensor) -> torch.Tensor:
        return fuse_history(codes, self.config.fusion)

    def forward(
        self,
        features: dict[str, torch.Tensor],
        state: torch.Tensor,
        aux: bool = False,
        frames: torch.Tensor | None = None,
    ):
        """features (B, T, ...) and state (B, S) -> actions (B, k, A); with `aux`, (actions,
        the predicted normalised object state (B, E)). With `frames` (B, T), features hold each
        distinct frame once (U, ...) and `frames` indexes them: overlapping history windows
        then share their frames' codes, computed once (train-policy's `consecutive`)."""
        codes = self.frame_codes(features)
        x = self.fuse(codes if frames is None else codes[frames])
        if self.config.use_state:
            x = torch.cat([x, state], dim=1)
        out, hidden = self.net(x, last_hidden=True)
        actions = out.unflatten(1, (self.config.chunk_size, self.action_dim))
        if not aux:
            return actions
        if self.aux is None:
            raise PixioError("this head was built without the auxiliary state read-out (head.aux_state=0)")
        return actions, self.aux(hidden)

    def loss(self, pred: torch.Tensor, target: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        return masked_loss((pred - target).square(), pad)
