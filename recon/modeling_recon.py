"""A MapAnything-style multi-view reconstruction head on frozen Pixio patch tokens.

    tokens (B, V, h, w, D_enc)   last block's normed Pixio patch tokens of each view
      -> Linear projection + fixed 2D sin-cos position of each patch (the same in every view)
         (+ patchified known rays, when intrinsics are given)
      -> + a learned reference-view vector on view 0
      -> alternating attention: even blocks over all views' tokens and a learned scale token,
         odd blocks within each view
      -> dense head (an MLP per token pixel-shuffled to full resolution, or the DPT decoder over
         the input tokens and three blocks' outputs): unit rays, depth along the ray (exp),
         confidence (1 + exp), mask logit
      -> pose head (mean of each view's tokens): translation + unit quaternion, cam-to-world in
         view 0's frame (view 0 is the identity by definition)
      -> scale head (scale token): metric scale m = exp(MLP)

World points are m (R (d r) + t). Any number of views from 1 up; the blocks are timm's `Block`
(attention through `F.scaled_dot_product_attention`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from timm.layers import Mlp
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import nn

from pixio_robot.atomic import atomic_path
from pixio_robot.errors import PixioError

from . import geometry
from .configuration_recon import ReconConfig
from .dpt import DPT

FORMAT = "pixio-robot/recon-head/1"
DENSE_CHANNELS = 6  # ray (3), depth, confidence, mask logit
_MAX_LOG = 20.0  # exp() arguments are clamped here: e^20 is far beyond any scene, and finite


@dataclass
class ReconOutput:
    """The factored prediction for B sets of V views, H x W pixels each.

    `depth` and `trans` are in the head's own (up-to-scale) units; multiply by `scale` for
    metres (the `metric=True` forms do). Poses are camera-to-world in view 0's frame."""

    rays: torch.Tensor  # (B, V, H, W, 3) unit directions, camera frame
    depth: torch.Tensor  # (B, V, H, W) distance along the ray
    conf: torch.Tensor  # (B, V, H, W) >= 1
    mask_logits: torch.Tensor  # (B, V, H, W) valid-surface logit
    quat: torch.Tensor  # (B, V, 4) unit, scalar-last
    trans: torch.Tensor  # (B, V, 3)
    scale: torch.Tensor  # (B,) metric scale m

    def _m(self, metric: bool, ndim: int) -> torch.Tensor | float:
        return self.scale.view(-1, *([1] * (ndim - 1))) if metric else 1.0

    def cam2world(self, metric: bool = False) -> torch.Tensor:
        return geometry.pose_matrix(self.quat, self.trans * self._m(metric, 3))

    def camera_points(self, metric: bool = False) -> torch.Tensor:
        return geometry.camera_points(self.rays, self.depth) * self._m(metric, 5)

    def points(self, metric: bool = False) -> torch.Tensor:
        """World points (B, V, H, W, 3): m (R (d r) + t), or without m."""
        return geometry.world_points(self.rays, self.depth, self.cam2world()) * self._m(metric, 5)

    def depth_z(self, metric: bool = False) -> torch.Tensor:
        return self.camera_points(metric)[..., 2]

    def mirrored(self) -> ReconOutput:
        """The same prediction for the images flipped left-right (geometry.mirror_pose): a
        prediction made on flipped images, mirrored, is one for the original images."""
        s = torch.tensor([-1.0, 1.0, 1.0], dtype=self.rays.dtype, device=self.rays.device)
        flip = lambda x: x.flip(-1)  # noqa: E731  (B, V, H, W): columns
        return ReconOutput(
            rays=(self.rays * s).flip(-2),
            depth=flip(self.depth),
            conf=flip(self.conf),
            mask_logits=flip(self.mask_logits),
            quat=geometry.mirror_quat(self.quat),
            trans=self.trans * s,
            scale=self.scale,
        )

    @staticmethod
    def average(outputs: list[ReconOutput]) -> ReconOutput:
        """One prediction from several of the same views (e.g. of the images and, mirrored back,
        of their flips): metric camera points, translations and scales averaged, rotations by the
        normalised mean of sign-aligned quaternions (close to the chordal mean for small spreads),
        confidences and mask logits averaged."""
        if len(outputs) == 1:
            return outputs[0]
        scale = torch.stack([o.scale for o in outputs]).mean(0)
        cam = torch.stack([o.camera_points(metric=True) for o in outputs]).mean(0)
        trans = torch.stack([o.trans * o.scale[:, None, None] for o in outputs]).mean(0)
        q0 = outputs[0].quat
        quats = [o.quat * torch.where((o.quat * q0).sum(-1, keepdim=True) < 0, -1.0, 1.0) for o in outputs]
        depth = cam.norm(dim=-1)
        m = scale.view(-1, 1, 1, 1)
        return ReconOutput(
            rays=cam / depth.clamp(min=1e-12)[..., None],
            depth=depth / m,
            conf=torch.stack([o.conf for o in outputs]).mean(0),
            mask_logits=torch.stack([o.mask_logits for o in outputs]).mean(0),
            quat=F.normalize(torch.stack(quats).mean(0), dim=-1),
            trans=trans / scale[:, None, None],
            scale=scale,
        )


class ReconModel(nn.Module):
    def __init__(self, config: ReconConfig, encoder_dim: int, patch_size: int = 16):
        super().__init__()
        self.config = config.check()
        self.encoder_dim, self.patch_size = int(encoder_dim), int(patch_size)
        d, p = config.dim, self.patch_size
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.proj = nn.Linear(encoder_dim, d)
        self.ray_embed = nn.Linear(3 * p * p, d)
        self.reference = nn.Parameter(torch.zeros(d))
        self.scale_token = nn.Parameter(torch.zeros(1, 1, d))
        self.blocks = nn.ModuleList(
            [Block(d, config.num_heads, config.mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(config.depth)]
        )
        self.norm = norm(d)
        if config.dense_head == "dpt":
            f = config.dpt_features
            self.dense_head = DPT(d, f, [f // 2, f, 2 * f, 2 * f], DENSE_CHANNELS)
        else:
            self.dense_head = Mlp(d, config.head_hidden, DENSE_CHANNELS * p * p)
        self.pose_head = Mlp(d, config.head_hidden, 7)
        self.scale_head = Mlp(d, config.head_hidden, 1)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # Tokens at unit scale, like the sin-cos positions added to them (MAE's patch embedding).
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.trunc_normal_(self.reference, std=0.02)
        nn.init.trunc_normal_(self.scale_token, std=0.02)
        # Start near a plausible guess: rays straight ahead at depth 1, identity poses, m = 1.
        if self.config.dense_head == "dpt":
            last = self.dense_head.output[-1]
            last.weight.mul_(0.1)
            last.bias.zero_()
            last.bias[2] = 1.0  # ray z
        else:
            p2 = self.patch_size**2
            self.dense_head.fc2.weight.mul_(0.1)
            self.dense_head.fc2.bias[2 * p2 : 3 * p2] = 1.0
        self.pose_head.fc2.weight.mul_(0.1)
        self.pose_head.fc2.bias[6] = 1.0  # quaternion w
        self.scale_head.fc2.weight.mul_(0.1)

    def assumed_camera(self, K: torch.Tensor, height: int) -> torch.Tensor:
        """(B, V) bool: which views' intrinsics K (B, V, 3, 3), for images `height` pixels high,
        are those of the camera the head assumes when told none (`recon.assumed_fovy`, to half a
        degree; every view when it is null). Training hides only these views' intrinsics."""
        if self.config.assumed_fovy is None:
            return torch.ones(K.shape[:-2], dtype=torch.bool, device=K.device)
        return (geometry.fovy_deg(K.double(), height) - self.config.assumed_fovy).abs() < 0.5

    def forward(
        self,
        tokens: torch.Tensor,
        intrinsics: torch.Tensor | None = None,
        known: torch.Tensor | None = None,
        tell: torch.Tensor | None = None,
    ) -> ReconOutput:
        """tokens (B, V, h, w, D_enc); intrinsics (B, V, 3, 3) in pixels of the h*p x w*p image,
        optional; known (B, V) bool: which views' intrinsics to use (default all given); tell
        (B, V) bool: which of those the trunk is told (default all of them; the others only
        have their predicted rays replaced)."""
        if tokens.ndim != 5 or tokens.shape[-1] != self.encoder_dim:
            raise PixioError(
                f"expected Pixio tokens (B, V, h, w, {self.encoder_dim}), got {tuple(tokens.shape)}: "
                "was the head trained on another encoder?"
            )
        b, v, h, w, _ = tokens.shape
        p = self.patch_size
        # Where a patch lies in its image is what rays and poses are made of; a frozen encoder's
        # tokens may carry it only faintly (a random one hardly at all), so the head adds it.
        pos = build_sincos2d_pos_embed([h, w], self.config.dim, device=tokens.device).view(h, w, -1)
        x = self.proj(tokens.float()) + pos  # (B, V, h, w, d)
        known_rays = None
        if intrinsics is not None:
            known_rays = geometry.rays_from_intrinsics(intrinsics.double(), h * p, w * p).float()
            patches = known_rays.unflatten(2, (h, p)).unflatten(4, (w, p))  # (B, V, h, p, w, p, 3)
            patches = patches.permute(0, 1, 2, 4, 3, 5, 6).flatten(-3)  # (B, V, h, w, p*p*3)
            use = torch.ones(b, v, dtype=torch.bool, device=x.device) if known is None else known.to(x.device)
            if tell is not None:
                use = use & tell.to(x.device)
            x = x + self.ray_embed(patches) * use[:, :, None, None, None]
        x = x.flatten(2, 3)  # (B, V, N, d)
        x = torch.cat([x[:, :1] + self.reference, x[:, 1:]], dim=1)
        n = x.shape[2]
        taps = [x]  # the DPT head's maps: the input tokens, then the outputs of config.dpt_blocks
        scale = self.scale_token.expand(b, -1, -1)
        for i, block in enumerate(self.blocks):
            if i % 2 == 0:  # global: every token of every view, and the scale token
                y = block(torch.cat([scale, x.flatten(1, 2)], dim=1))
                scale, x = y[:, :1], y[:, 1:].unflatten(1, (v, n))
            else:  # frame: within each view
                x = block(x.flatten(0, 1)).unflatten(0, (b, v))
            taps += [x] * self.config.dpt_blocks.count(i)
        x = self.norm(x)
        taps[-1] = x  # the last block's output, normed as the MLP and pose heads read it
        out = self._dense(taps, h, w)
        quat, trans = self._poses(x)
        m = torch.exp(self.scale_head(self.norm(scale[:, 0])).squeeze(-1).clamp(-_MAX_LOG, _MAX_LOG))
        rays = out[..., :3]
        if known_rays is not None:
            use = torch.ones(b, v, dtype=torch.bool, device=x.device) if known is None else known.to(x.device)
            rays = torch.where(use[:, :, None, None, None], known_rays, rays)
        return ReconOutput(
            rays=rays,
            depth=torch.exp(out[..., 3].clamp(-_MAX_LOG, _MAX_LOG)),
            conf=1 + torch.exp(out[..., 4].clamp(max=_MAX_LOG)),
            mask_logits=out[..., 5],
            quat=quat,
            trans=trans,
            scale=m,
        )

    def _dense(self, taps: list[torch.Tensor], h: int, w: int) -> torch.Tensor:
        """Per-pixel outputs (B, V, H, W, C) from the 4 taps (B, V, N, d), the last one normed:
        the MLP head reads the last one, the DPT head all four (each normed)."""
        b, v = taps[0].shape[:2]
        p = self.patch_size
        if self.config.dense_head == "dpt":
            maps = [t if i == 3 else self.norm(t) for i, t in enumerate(taps)]
            y = self.dense_head([t.transpose(-1, -2).reshape(b * v, -1, h, w) for t in maps])  # (B*V, C, 16h, 16w)
            if p != 16:
                y = F.interpolate(y, size=(h * p, w * p), mode="bilinear", align_corners=False)
        else:
            y = self.dense_head(taps[-1]).transpose(-1, -2).reshape(b * v, -1, h, w)  # (B*V, C*p*p, h, w)
            y = F.pixel_shuffle(y, p)  # (B*V, C, H, W)
        y = y.unflatten(0, (b, v)).permute(0, 1, 3, 4, 2)
        return torch.cat([F.normalize(y[..., :3], dim=-1), y[..., 3:]], dim=-1)

    def _poses(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw = self.pose_head(x.mean(2))  # (B, V, 7)
        trans, quat = raw[..., :3], F.normalize(raw[..., 3:], dim=-1)
        if self.config.pose_frame == "shared":  # inv(P_0) P_i: view 0's pose becomes the identity
            q0, t0 = quat[:, :1], trans[:, :1]
            trans = (geometry.quat_to_matrix(q0).transpose(-1, -2) @ (trans - t0)[..., None])[..., 0]
            quat = geometry.quat_multiply(geometry.quat_conjugate(q0), quat)
        # View 0 defines the frame: its pose is the identity, not something to learn.
        identity = torch.tensor([0.0, 0.0, 0.0, 1.0], device=x.device, dtype=quat.dtype)
        quat = torch.cat([identity.expand_as(quat[:, :1]), quat[:, 1:]], dim=1)
        trans = torch.cat([torch.zeros_like(trans[:, :1]), trans[:, 1:]], dim=1)
        return quat, trans

    # ---- checkpoints -----------------------------------------------------------------------

    def save(self, path: str | os.PathLike, metadata: dict | None = None) -> Path:
        """Weights as safetensors with the config (and `metadata`, JSON-encoded) in its header."""
        path = Path(path)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        meta = {
            "format": FORMAT,
            "config": json.dumps(self.config.to_dict()),
            "encoder_dim": str(self.encoder_dim),
            "patch_size": str(self.patch_size),
        } | {k: json.dumps(v) for k, v in (metadata or {}).items()}
        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, prefix: str = "") -> tuple[ReconModel, dict]:
        """(model, metadata) from a file written by `save` (or a training checkpoint)."""
        path = Path(path)
        if not path.is_file():
            raise PixioError(f"{path}: no such recon checkpoint: give the model.safetensors of a train-recon run")
        try:
            with safe_open(str(path), "pt") as f:
                header = f.metadata() or {}
                if header.get("format") != FORMAT:
                    raise PixioError(
                        f"{path}: not a recon head checkpoint (format {header.get('format')!r}): give the "
                        "model.safetensors written by pixio-robot train-recon"
                    )
                state = {k[len(prefix) :]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
        except SafetensorError as e:
            raise PixioError(f"{path}: unreadable safetensors file ({e})") from e
        config = ReconConfig.from_dict(json.loads(header["config"]))
        model = cls(config, int(header["encoder_dim"]), int(header["patch_size"]))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise PixioError(f"{path}: weights do not fit the recorded architecture (missing {missing[:3]}, ...)")
        skip = {"format", "config", "encoder_dim", "patch_size"}
        meta = {k: json.loads(v) for k, v in header.items() if k not in skip}
        return model.eval(), meta
