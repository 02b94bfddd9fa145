"""Monocular depth heads on frozen Pixio taps (docs/DESIGN.md section 7).

taps (B, T, h, w, C)   T = 4 (DPT) or 1 (linear) taps of the encoder, each the normed patch
                       tokens with the mean normed class token concatenated (C = 2 D)
-> linear: one Linear per token, bilinear up to the image
-> dpt:    reassemble the taps at 4x, 2x, 1x and 1/2x of the patch grid, fuse them coarse to
           fine with residual conv units (DPT, Ranftl et al. 2021), up to the image
-> sigmoid x max_depth, at least min_depth: depth z in metres (B, H, W)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from pixio_robot.atomic import atomic_path
from pixio_robot.errors import PixioError

from .configuration_depth import DepthHeadConfig
from .dpt import DPT

FORMAT = "pixio-robot/depth-head/1"
_DECODER = ("project.", "resize.", "to_features.", "fusion.", "output.")


def _prefix_decoder_keys(state: dict, prefix: str, *args) -> None:
    for key in [k for k in state if k.startswith(tuple(prefix + d for d in _DECODER))]:
        state[prefix + "dpt." + key[len(prefix) :]] = state.pop(key)


class DepthHead(nn.Module):
    def __init__(self, config: DepthHeadConfig, tap_dim: int):
        super().__init__()
        self.config, self.tap_dim = config.check(), int(tap_dim)
        if config.head == "linear":
            self.linear = nn.Linear(tap_dim, 1)
            return
        self.dpt = DPT(tap_dim, config.features, config.channels)
        # Heads saved before the decoder moved into recon/dpt.py name its weights without "dpt.".
        self._register_load_state_dict_pre_hook(_prefix_decoder_keys)

    def forward(self, taps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """taps (B, T, h, w, C) -> depth (B, H, W) in metres."""
        if taps.ndim != 5 or taps.shape[1] != self.config.taps or taps.shape[-1] != self.tap_dim:
            raise PixioError(
                f"expected {self.config.taps} encoder taps (B, {self.config.taps}, h, w, {self.tap_dim}), got "
                f"{tuple(taps.shape)}: was the head trained on another encoder?"
            )
        x = taps.float().permute(0, 1, 4, 2, 3)  # (B, T, C, h, w)
        if self.config.head == "linear":
            logit = self.linear(x[:, 0].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        else:
            logit = self.dpt([x[:, i] for i in range(x.shape[1])])
        logit = F.interpolate(logit, size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
        return (torch.sigmoid(logit) * self.config.max_depth).clamp(min=self.config.min_depth)

    # ---- files -------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike, metadata: dict | None = None) -> Path:
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        header = {"format": FORMAT, "config": json.dumps(self.config.to_dict()), "tap_dim": str(self.tap_dim)}
        header |= {k: json.dumps(v) for k, v in (metadata or {}).items()}
        with atomic_path(Path(path)) as tmp:
            save_file(state, str(tmp), metadata=header)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> tuple[DepthHead, dict]:
        path = Path(path)
        if not path.is_file():
            raise PixioError(f"{path}: no such depth head: give the model.safetensors of a train-depth run")
        try:
            with safe_open(str(path), "pt") as f:
                header = f.metadata() or {}
                if header.get("format") != FORMAT:
                    raise PixioError(f"{path}: not a depth head (give the model.safetensors written by train-depth)")
                state = {k: f.get_tensor(k) for k in f.keys()}
        except SafetensorError as e:
            raise PixioError(f"{path}: unreadable safetensors file ({e})") from e
        model = cls(DepthHeadConfig.from_dict(json.loads(header["config"])), int(header["tap_dim"]))
        model.load_state_dict(state)
        meta = {k: json.loads(v) for k, v in header.items() if k not in ("format", "config", "tap_dim")}
        return model.eval(), meta
