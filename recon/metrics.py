"""The metrics of the Pixio paper's MapAnything table (docs/DESIGN.md section 5), plus point-cloud
Chamfer distance and F-score. numpy, float64.

Per view set (all in view 0's frame; the up-to-scale prediction and the ground truth each
divided by its own mean distance to the origin over the valid pixels):

- Scale rel: |s_pred - s_gt| / s_gt, s the mean distance of the metric points (m times the
  prediction) and of the ground truth, in metres;
- Points rel: mean over valid pixels of ||p_hat - p|| / ||p||, averaged over views;
- Points tau@1.03: % of valid pixels with max(||p|| / ||p_hat||, ||p_hat|| / ||p||) < 1.03;
- Pose AUC@5: per pair i < j, error = max(rotation angle error, translation-direction
  error) of the relative pose, the latter folded to min(angle, 180 - angle) as MapAnything
  does (the sign of a translation is not scored); histogram in 1-degree bins over [0, 5],
  cumulative sum, mean, x100;
- Depth rel and Depth tau@1.03: the same on z of the camera-frame points.

A set in which some view has no valid ground-truth pixel scores NaN on every metric and is
left out of the averages, as in MapAnything (its views are not skipped one by one).

Sets are averaged per number of views (`average`). Chamfer distance and F-score compare fused
clouds in metres.

Monocular depth (docs/DESIGN.md section 7) is scored as the official `eval_depth` does, over
the valid pixels of one or many maps together (`depth_metrics`): d1, d2, d3, abs_rel, sq_rel,
rmse, rmse_log, log10 and silog.
"""

from __future__ import annotations

import math

import numpy as np

from pixio_robot.deps import open3d

METRICS = ("scale_rel", "points_rel", "points_tau", "pose_auc5", "depth_rel", "depth_tau")
CLOUD_METRICS = ("chamfer", "fscore")
# Beside MapAnything's AUC@5, two pose read-outs that still move while every pair is off by
# more than 5 degrees: AUC@30 (as DUSt3R/VGGT report it) and the median rotation error.
POSE_EXTRAS = ("pose_auc30", "rot_err")
LABELS = {
    "scale_rel": "Scale rel",
    "points_rel": "Points rel",
    "points_tau": "Points tau@1.03",
    "pose_auc5": "Pose AUC@5",
    "depth_rel": "Depth rel",
    "depth_tau": "Depth tau@1.03",
    "chamfer": "Chamfer (m)",
    "fscore": "F-score@1cm",
    "pose_auc30": "Pose AUC@30",
    "rot_err": "Rot. err (deg)",
}


DEPTH_METRICS = ("d1", "d2", "d3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog")


def depth_metrics(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> dict[str, float]:
    """The official monocular-depth metrics of predicted against true depth (metres) over the
    valid pixels (default: gt > 0): with t = max(d / d_hat, d_hat / d), d1..d3 = fraction with
    t < 1.25^k; abs_rel = mean |d_hat - d| / d; sq_rel = mean (d_hat - d)^2 / d; rmse; rmse_log =
    rms of g = log d_hat - log d; log10 = mean |log10 d_hat - log10 d|; silog = sqrt(mean g^2 -
    0.5 (mean g)^2). No valid pixel: NaN everywhere."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    valid = (gt > 0) if valid is None else np.asarray(valid, bool) & (gt > 0)
    valid &= np.isfinite(gt) & np.isfinite(pred) & (pred > 0)
    if not valid.any():
        return dict.fromkeys(DEPTH_METRICS, math.nan)
    p, d = pred[valid], gt[valid]
    t = np.maximum(d / p, p / d)
    g = np.log(p) - np.log(d)
    return {
        "d1": float((t < 1.25).mean()),
        "d2": float((t < 1.25**2).mean()),
        "d3": float((t < 1.25**3).mean()),
        "abs_rel": float((np.abs(p - d) / d).mean()),
        "sq_rel": float(((p - d) ** 2 / d).mean()),
        "rmse": float(np.sqrt(((p - d) ** 2).mean())),
        "rmse_log": float(np.sqrt((g**2).mean())),
        "log10": float(np.abs(np.log10(p) - np.log10(d)).mean()),
        "silog": float(np.sqrt((g**2).mean() - 0.5 * g.mean() ** 2)),
    }


# ---- dense maps -----------------------------------------------------------------------------


def relative_error(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> float:
    """Mean ||pred - gt|| / ||gt|| over valid entries; pred/gt (..., C) or scalars (...)."""
    pred, gt = _vectors(pred), _vectors(gt)
    gt_norm = np.linalg.norm(gt, axis=-1)
    ok = valid & (gt_norm > 0)
    if not ok.any():
        return math.nan
    return float((np.linalg.norm(pred - gt, axis=-1)[ok] / gt_norm[ok]).mean())


def inlier_ratio(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, thresh: float = 1.03) -> float:
    """% of valid entries with max(|gt| / |pred|, |pred| / |gt|) < thresh."""
    pred_norm, gt_norm = np.linalg.norm(_vectors(pred), axis=-1), np.linalg.norm(_vectors(gt), axis=-1)
    ok = valid & (gt_norm > 0)
    if not ok.any():
        return math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.maximum(gt_norm / pred_norm, pred_norm / gt_norm)
    return float(100.0 * (np.nan_to_num(ratio[ok], nan=np.inf) < thresh).mean())


def _vectors(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x if x.shape[-1] == 3 else x[..., None]


def mean_distance(points: np.ndarray, valid: np.ndarray) -> float:
    return float(np.linalg.norm(points[valid], axis=-1).mean())


# ---- poses ----------------------------------------------------------------------------------


def rotation_angle_deg(R: np.ndarray) -> np.ndarray:
    skew = np.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1)
    trace = np.trace(R, axis1=-2, axis2=-1)
    return np.degrees(np.arctan2(np.linalg.norm(skew, axis=-1), trace - 1))


def angle_between_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle between vectors (..., 3); 90 where either has no length (no direction to match)."""
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    cross = np.linalg.norm(np.cross(a, b), axis=-1)
    angle = np.degrees(np.arctan2(cross, (a * b).sum(-1)))
    return np.where((na > 1e-12) & (nb > 1e-12), angle, 90.0)


def relative_pose_errors(pred_c2w: np.ndarray, gt_c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation and translation-direction errors (degrees) of every pair i < j of (V, 4, 4)
    camera-to-world poses; the relative pose of a pair is inv(T_i) @ T_j. The direction error
    is folded into [0, 90] (a reversed translation scores 0), as MapAnything computes it; a
    translation of no length has no direction and scores the worst, 90."""
    pred_c2w, gt_c2w = np.asarray(pred_c2w, np.float64), np.asarray(gt_c2w, np.float64)
    i, j = np.triu_indices(len(gt_c2w), k=1)
    rel_pred = np.linalg.inv(pred_c2w[i]) @ pred_c2w[j]
    rel_gt = np.linalg.inv(gt_c2w[i]) @ gt_c2w[j]
    rot = rotation_angle_deg(np.swapaxes(rel_pred[:, :3, :3], -1, -2) @ rel_gt[:, :3, :3])
    trans = angle_between_deg(rel_pred[:, :3, 3], rel_gt[:, :3, 3])
    return rot, np.minimum(trans, 180.0 - trans)


def pose_auc(rot_err_deg: np.ndarray, trans_err_deg: np.ndarray, max_deg: int = 5) -> float:
    """AUC (x100) of the pair error max(rotation, translation) over [0, max_deg] in 1-degree bins."""
    err = np.maximum(np.asarray(rot_err_deg, np.float64), np.asarray(trans_err_deg, np.float64))
    if err.size == 0:
        return math.nan
    hist, _ = np.histogram(err, bins=np.arange(max_deg + 1))
    return float(np.cumsum(hist / err.size).mean() * 100.0)


# ---- one view set ---------------------------------------------------------------------------


def set_metrics(
    pred_points: np.ndarray,
    pred_cam_points: np.ndarray,
    pred_scale: float,
    pred_c2w: np.ndarray,
    gt_points: np.ndarray,
    gt_cam_points: np.ndarray,
    gt_c2w: np.ndarray,
    valid: np.ndarray,
) -> dict[str, float]:
    """The six metrics of one set of V views.

    pred_points / pred_cam_points (V, H, W, 3): the up-to-scale prediction (world = view 0's
    frame, and camera frames); pred_scale: its metric scale m; gt_* the same in metres;
    *_c2w (V, 4, 4) camera-to-world in view 0's frame; valid (V, H, W) ground truth exists."""
    valid = np.asarray(valid, bool)
    if not all(v.any() for v in valid):  # MapAnything: such a set is undefined, not partly scored
        return dict.fromkeys(METRICS, math.nan)
    s_pred, s_gt = mean_distance(pred_points, valid), mean_distance(gt_points, valid)
    pn, gn = pred_points / s_pred, gt_points / s_gt
    zp, zg = pred_cam_points[..., 2] / s_pred, gt_cam_points[..., 2] / s_gt
    views = range(len(valid))
    per_view = {
        "points_rel": [relative_error(pn[v], gn[v], valid[v]) for v in views],
        "points_tau": [inlier_ratio(pn[v], gn[v], valid[v]) for v in views],
        "depth_rel": [relative_error(zp[v], zg[v], valid[v]) for v in views],
        "depth_tau": [inlier_ratio(zp[v], zg[v], valid[v]) for v in views],
    }
    out = {"scale_rel": abs(pred_scale * s_pred - s_gt) / s_gt}
    out |= {k: float(np.mean(v)) for k, v in per_view.items()}
    out["pose_auc5"] = pose_auc(*relative_pose_errors(pred_c2w, gt_c2w)) if len(valid) > 1 else math.nan
    return {k: out[k] for k in METRICS}


def pose_extras(pred_c2w: np.ndarray, gt_c2w: np.ndarray) -> dict[str, float]:
    """Pose AUC@30 and the median rotation error (degrees) over the pairs of one view set."""
    rot, trans = relative_pose_errors(pred_c2w, gt_c2w)
    return {"pose_auc30": pose_auc(rot, trans, max_deg=30), "rot_err": float(np.median(rot))}


def cloud_metrics(pred: np.ndarray, gt: np.ndarray, threshold: float = 0.01) -> dict[str, float]:
    """Chamfer distance (mean of the two directions' mean nearest-neighbour distances) and
    F-score at `threshold` (harmonic mean of precision and recall within it) of two (N, 3)
    clouds, through open3d's nearest-neighbour search."""
    o3d = open3d()

    if len(pred) == 0 or len(gt) == 0:
        return {"chamfer": math.nan, "fscore": 0.0, "precision": 0.0, "recall": 0.0}
    a = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(pred, np.float64)))
    b = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(gt, np.float64)))
    d_ab, d_ba = np.asarray(a.compute_point_cloud_distance(b)), np.asarray(b.compute_point_cloud_distance(a))
    precision, recall = float((d_ab < threshold).mean()), float((d_ba < threshold).mean())
    fscore = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "chamfer": float((d_ab.mean() + d_ba.mean()) / 2),
        "fscore": 100.0 * fscore,
        "precision": precision,
        "recall": recall,
    }


def average(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over sets, ignoring sets where it is undefined (NaN)."""
    return {k: float(np.nanmean(v)) if np.isfinite(v).any() else math.nan for k, v in _columns(rows).items()}


def standard_error(rows: list[dict[str, float]]) -> dict[str, float]:
    """Standard error of each metric's mean over sets (NaN below two defined sets): a set of 60
    scenes pins a mean F-score only to a few points, so every result carries it."""
    out = {}
    for k, values in _columns(rows).items():
        values = values[np.isfinite(values)]
        out[k] = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan
    return out


def _columns(rows: list[dict[str, float]]) -> dict[str, np.ndarray]:
    """Each metric some set has, as one value per set (NaN where a set lacks it)."""
    keys = [k for k in (*METRICS, *POSE_EXTRAS, *CLOUD_METRICS) if any(k in r for r in rows)]
    return {k: np.array([r.get(k, math.nan) for r in rows], np.float64) for k in keys}


def format_table(results: dict[str, dict[str, float]], title: str = "views") -> str:
    """Rows per setting (e.g. '2 views'), columns the metrics, as a Markdown table."""
    keys = [k for k in (*METRICS, *POSE_EXTRAS, *CLOUD_METRICS) if any(k in r for r in results.values())]
    lines = [f"| {title} | " + " | ".join(LABELS[k] for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, row in results.items():
        cells = [_cell(k, row.get(k, math.nan)) for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(key: str, value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    if key in ("points_tau", "depth_tau", "pose_auc5", "fscore", "pose_auc30", "rot_err"):
        return f"{value:.1f}"
    return f"{value:.4f}" if key == "chamfer" else f"{value:.3f}"
