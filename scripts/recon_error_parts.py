"""Where a reconstruction head's error lies: its output with one part replaced by the truth.

    uv run python scripts/recon_error_parts.py pixio_robot/weights/recon_sim_vitn16_v2.safetensors \
        captures/test7/stack captures/test7/pick_place captures/test7/push captures/test7/drawer_open

An experiment, not a command of the toolkit. On the same fixed view sets as `eval-recon` (one
per scene, seed 0) it scores Points rel / tau of (1) the head's own output, (2) its camera-frame
points placed with the true poses, (3) the true camera-frame points placed with its poses, and
Pose AUC@5 of its poses with the true rotation or the true translation direction put in. Pairs
are pooled over the sets (`eval-recon` averages per set). The metric scale's part: the F-score@1cm
of its cloud as `eval-recon` scores it and with the whole cloud rescaled to the true size, and how
the predicted size, m times the size of the up-to-scale points, follows the true one (log
standard deviations and correlations over the sets). `--flip`: the test-time flip. Prints one
JSON object; `--out FILE` keeps it.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from recon.data import load_scenes
from recon.infer import Reconstructor
from recon.metrics import cloud_metrics, pose_auc, relative_pose_errors, set_metrics
from recon.sampling import collate, fixed_view_sets


def place(cam_points: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """(V, H, W, 3) camera-frame points -> world points under (V, 4, 4) camera-to-world poses."""
    return np.einsum("vij,vhwj->vhwi", c2w[:, :3, :3], cam_points) + c2w[:, None, None, :3, 3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("data", nargs="+")
    parser.add_argument("--views", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--flip", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rec = Reconstructor.from_checkpoint(args.checkpoint, None, "cpu", None, args.flip)
    scenes = load_scenes(args.data, rec.image_size, geometry=True)
    tokens = [rec.cache.tokens(s) for s in scenes]
    mirrored = [rec.cache.tokens(s, mirrored=True) for s in scenes] if args.flip else None
    results = {}
    for n in args.views:
        rot, trans, rows = [], [], {"own": [], "true_poses": [], "true_camera_points": []}
        fscore, log_m, log_size, log_true = [], [], [], []
        for view_set in fixed_view_sets([s.num_views for s in scenes], n, 1, 0):
            x, tgt = collate([view_set], tokens, scenes)
            x_flip = None if mirrored is None else mirrored[view_set[0]][torch.as_tensor(view_set[1])][None]
            with torch.no_grad():
                out = rec.predict(x, None, x_flip)
            m = float(out.scale[0])
            pred_c2w, true_c2w = out.cam2world()[0].double().numpy(), tgt.cam2world[0].double().numpy()
            pred_cam, true_cam = out.camera_points()[0].double().numpy(), tgt.camera_points()[0].double().numpy()
            true_pts, valid = tgt.points()[0].double().numpy(), tgt.valid[0].numpy()
            r, t = relative_pose_errors(pred_c2w, true_c2w)
            rot.extend(r)
            trans.extend(t)
            own = out.points()[0].double().numpy()
            rows["own"].append(set_metrics(own, pred_cam, m, pred_c2w, true_pts, true_cam, true_c2w, valid))
            # metric camera points under the true (metric) poses; set_metrics normalises the scale away
            with_true_poses = place(pred_cam * m, true_c2w)
            rows["true_poses"].append(
                set_metrics(with_true_poses, pred_cam, m, true_c2w, true_pts, true_cam, true_c2w, valid)
            )
            metric_c2w = pred_c2w.copy()
            metric_c2w[:, :3, 3] *= m
            with_true_points = place(true_cam, metric_c2w)
            rows["true_camera_points"].append(
                set_metrics(with_true_points, true_cam, 1.0, metric_c2w, true_pts, true_cam, true_c2w, valid)
            )
            # the cloud eval-recon scores (every point, its default), then rescaled to the true mean distance
            cloud, truth = (own * m)[out.mask_logits[0].numpy() > 0], true_pts[valid]
            size, true_size = (
                np.linalg.norm(own[valid], axis=-1).mean(),
                np.linalg.norm(true_pts[valid], axis=-1).mean(),
            )
            oracle = true_size / (m * size)
            fscore.append([cloud_metrics(c, truth)["fscore"] for c in (cloud, cloud * oracle)])
            log_m.append(np.log(m))
            log_size.append(np.log(size))
            log_true.append(np.log(true_size))
        rot, trans = np.array(rot), np.array(trans)
        row = {
            "pairs": len(rot),
            "rot_median": float(np.median(rot)),
            "trans_median": float(np.median(trans)),
            "rot_within_5": float((rot < 5).mean()),
            "trans_within_5": float((trans < 5).mean()),
            "pose_auc5": pose_auc(rot, trans),
            "pose_auc5_true_translation": pose_auc(rot, np.zeros_like(trans)),
            "pose_auc5_true_rotation": pose_auc(np.zeros_like(rot), trans),
        }
        for name, sets in rows.items():  # depth rel only of the own output: the others mix scales
            for key in ("points_rel", "points_tau", "depth_rel")[: 3 if name == "own" else 2]:
                row[f"{name}_{key}"] = float(np.nanmean([s[key] for s in sets]))
        fscore, log_m, log_size, log_true = map(np.array, (fscore, log_m, log_size, log_true))
        row |= {
            "fscore": float(fscore[:, 0].mean()),
            "fscore_true_scale": float(fscore[:, 1].mean()),
            "log_scale_error_std": float((log_m + log_size - log_true).std()),
            "log_scale_error_std_m_at_its_mean": float((log_m.mean() + log_size - log_true).std()),
            "log_m_std": float(log_m.std()),
            "log_true_size_std": float(log_true.std()),
            "corr_log_size_true_size": float(np.corrcoef(log_size, log_true)[0, 1]),
            "corr_log_m_true_size": float(np.corrcoef(log_m, log_true)[0, 1]),
        }
        results[f"{n} views"] = row
    print(json.dumps(results, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
