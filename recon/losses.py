"""Ground truth of a batch of view sets, and the MapAnything training loss (docs/DESIGN.md section 5).

Every geometric term compares prediction and ground truth after each is divided by its own
mean distance to the origin (the prediction without the metric scale m, the ground truth in
metres): the geometry is learnt up to scale, and m alone carries the metres, through a scale
loss on metric data only. Points, depth and translations are log-compressed
(x / |x| log(1 + |x|)), every regression uses Barron's robust loss, and the world points are
weighted by the predicted confidence: conf * err - alpha log(conf).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import geometry
from .configuration_recon import ReconConfig
from .modeling_recon import ReconOutput


@dataclass
class Targets:
    """Ground truth of B sets of V views, poses relative to view 0, metres."""

    rays: torch.Tensor  # (B, V, H, W, 3)
    depth: torch.Tensor  # (B, V, H, W) along the ray, 0 where invalid
    valid: torch.Tensor  # (B, V, H, W) bool
    cam2world: torch.Tensor  # (B, V, 4, 4), view 0 is the identity
    K: torch.Tensor  # (B, V, 3, 3)
    metric: torch.Tensor  # (B,) bool: are the depths in metres?

    @classmethod
    def from_views(cls, depth_z, K, cam2world, metric=None) -> Targets:
        """From camera-frame z depth (B, V, H, W; 0/NaN/inf/negative = none), intrinsics
        (B, V, 3, 3) and camera-to-world poses (B, V, 4, 4) in any world frame."""
        depth_z = torch.as_tensor(depth_z)
        K = torch.as_tensor(K, dtype=torch.float64)
        h, w = depth_z.shape[-2:]
        rays = geometry.rays_from_intrinsics(K, h, w)
        valid = torch.isfinite(depth_z) & (depth_z > 0)
        z = torch.where(valid, depth_z.double(), 0.0)
        depth = geometry.z_to_depth_along_ray(z, rays)
        rel = geometry.relative_to_first(torch.as_tensor(cam2world, dtype=torch.float64))
        metric = torch.ones(depth_z.shape[0], dtype=torch.bool) if metric is None else torch.as_tensor(metric)
        return cls(rays.float(), depth.float(), valid, rel.float(), K.float(), metric.bool())

    def to(self, device) -> Targets:
        return Targets(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))

    def camera_points(self) -> torch.Tensor:
        return geometry.camera_points(self.rays, self.depth)

    def points(self) -> torch.Tensor:
        return geometry.world_points(self.rays, self.depth, self.cam2world)


def robust(diff: torch.Tensor, alpha: float = 0.5, c: float = 0.05) -> torch.Tensor:
    """Barron's general robust loss of vector differences (..., C) -> (...)."""
    x2 = ((diff / c) ** 2).sum(-1)
    a = abs(alpha - 2)
    return a / alpha * ((x2 / a + 1) ** (alpha / 2) - 1)


def silog_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, lambd: float = 0.5) -> torch.Tensor:
    """Scale-invariant log loss of monocular depth (docs/DESIGN.md section 7), over the valid
    pixels: sqrt(mean g^2 - lambd (mean g)^2), g = log target - log pred."""
    g = torch.log(target[valid]) - torch.log(pred[valid])
    return torch.sqrt((g**2).mean() - lambd * g.mean() ** 2)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


class ReconLoss(nn.Module):
    def __init__(self, config: ReconConfig):
        super().__init__()
        self.config = config

    def rho(self, diff: torch.Tensor) -> torch.Tensor:
        return robust(diff, self.config.robust_alpha, self.config.robust_c)

    def forward(self, out: ReconOutput, tgt: Targets) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.config
        valid = tgt.valid
        pred_pts, gt_pts = out.points(), tgt.points()  # prediction divided by m: no scale applied
        s_pred = geometry.mean_distance(pred_pts, valid).clamp(min=1e-8)  # (B,)
        s_gt = geometry.mean_distance(gt_pts, valid).clamp(min=1e-8)
        per_pixel = (-1, 1, 1, 1, 1)

        def compressed(pred, gt, scale_shape) -> torch.Tensor:
            return self.rho(
                geometry.log_compress(pred / s_pred.view(scale_shape))
                - geometry.log_compress(gt / s_gt.view(scale_shape))
            )

        err_points = compressed(pred_pts, gt_pts, per_pixel)
        terms = {
            "points": masked_mean(out.conf * err_points - c.conf_alpha * torch.log(out.conf), valid),
            "cam_points": masked_mean(compressed(out.camera_points(), tgt.camera_points(), per_pixel), valid),
            "rays": self.rho(out.rays - tgt.rays).mean(),
            "depth": masked_mean(
                self.rho(
                    (
                        torch.log1p(out.depth / s_pred.view(-1, 1, 1, 1))
                        - torch.log1p(tgt.depth / s_gt.view(-1, 1, 1, 1))
                    )[..., None]
                ),
                valid,
            ),
            "mask": F.binary_cross_entropy_with_logits(out.mask_logits, valid.float()),
        }
        if out.trans.shape[1] > 1:  # view 0 is the identity by construction
            gt_trans, gt_quat = tgt.cam2world[:, 1:, :3, 3], geometry.matrix_to_quat(tgt.cam2world[:, 1:, :3, :3])
            terms["translation"] = compressed(out.trans[:, 1:], gt_trans, (-1, 1, 1)).mean()
            q = out.quat[:, 1:]
            terms["rotation"] = torch.minimum((q - gt_quat).abs().sum(-1), (q + gt_quat).abs().sum(-1)).mean()
        else:
            terms["translation"] = terms["rotation"] = out.trans.sum() * 0
        if tgt.metric.any():
            # m times the size of the up-to-scale prediction should be the true size. Detached
            # ("head"), the scale head alone learns the metres; "both" also trains the size.
            size = s_pred if c.scale_grad == "both" else s_pred.detach()
            log_ratio = torch.log(out.scale * size) - torch.log(s_gt)
            terms["scale"] = masked_mean(log_ratio.abs(), tgt.metric)
        else:
            terms["scale"] = out.scale.sum() * 0
        weights = {
            "points": c.w_points,
            "cam_points": c.w_cam_points,
            "rays": c.w_rays,
            "depth": c.w_depth,
            "translation": c.w_translation,
            "rotation": c.w_rotation,
            "scale": c.w_scale,
            "mask": c.w_mask,
        }
        total = sum(weights[k] * v for k, v in terms.items())
        return total, {k: float(v.detach()) for k, v in terms.items()}
