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

FORMAT = "pixio-robot/depth-head/1"


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


class DepthHead(nn.Module):
    def __init__(self, config: DepthHeadConfig, tap_dim: int):
        super().__init__()
        self.config, self.tap_dim = config.check(), int(tap_dim)
        if config.head == "linear":
            self.linear = nn.Linear(tap_dim, 1)
            return
        f, ch = config.features, config.channels
        self.project = nn.ModuleList([nn.Conv2d(tap_dim, c, 1) for c in ch])
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
            nn.Conv2d(32, 1, 1),
        )

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
            layers = [conv(res(proj(x[:, i]))) for i, (proj, res, conv) in enumerate(self._stages())]
            path = self.fusion[3](layers[3])
            for i in (2, 1, 0):
                path = self.fusion[i](path, layers[i][..., : path.shape[-2], : path.shape[-1]])
            logit = self.output(path)
        logit = F.interpolate(logit, size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
        return (torch.sigmoid(logit) * self.config.max_depth).clamp(min=self.config.min_depth)

    def _stages(self):
        return zip(self.project, self.resize, self.to_features, strict=True)

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
