"""How sharp a trained keypoint head's heat maps are, on frames of its dataset's feature cache.

    uv run python scripts/keypoint_maps.py runs/pp_100/checkpoints/best data/pick_place --frames 1000

For every map: the effective number of patches under it (exp of the map's entropy; 1 is one
patch, the grid's size a uniform map), median over the frames, and with maps shared by several
cameras, the share of the map's mass on each camera and how often it is split between them
(20-80% on the first). A map that covers most of the grid gives a weighted average of positions,
not a keypoint. An experiment script, not a command of the toolkit: it reads the caches that
train-policy built (the policy's encoder and cameras) and prints one JSON line per camera.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("policy", help="a saved keypoint policy (checkpoints/best)")
    parser.add_argument("dataset", help="the dataset it was trained on (its features/ cache is read)")
    parser.add_argument("--frames", type=int, default=1000, help="frames spread evenly over the dataset")
    args = parser.parse_args()

    from pixio_robot.errors import PixioError
    from policies import cache as feature_cache
    from policies.modeling_pixio import join_views, load_policy

    policy = load_policy(args.policy)
    if policy.config.head_config.name != "keypoints":
        raise PixioError(f"{args.policy} has a {policy.config.head_config.name} head: give a keypoint policy")
    maps = policy.head.keypoints
    sha = policy.config.encoder_sha256[:12]
    views = []
    for camera in policy.config.cameras:
        found = sorted(Path(args.dataset, "features").glob(f"*-{sha}-*-{camera}-*"))
        if not found:
            raise PixioError(f"no feature cache of camera {camera} for this policy's encoder under {args.dataset}")
        arrays = feature_cache.open_cache(found[0], feature_cache.read_manifest(found[0]))
        n = len(arrays["patches"])
        index = torch.linspace(0, n - 1, min(args.frames, n)).long()
        views.append({"patches": torch.from_numpy(arrays["patches"][index.numpy()])})
    grid = join_views(views)["patches"]  # (N, h, V*w, D), as the head sees it
    cameras = policy.config.cameras
    width = grid.shape[2] // len(cameras)
    with torch.no_grad():
        for v in range(maps.views):
            part = grid[:, :, v * width : (v + 1) * width] if maps.views > 1 else grid
            p = maps.attention(part.flatten(1, 2), v)  # (N, patches, K)
            effective = (-(p.clamp_min(1e-12).log() * p).sum(1)).exp().median(0).values
            line = {
                "cameras": cameras[v] if maps.views > 1 else cameras,
                "patches": p.shape[1],
                "temperature": round(float(maps.log_temperature.exp()), 3),
                "effective_patches": sorted(round(float(e), 1) for e in effective),
            }
            if maps.views == 1 and len(cameras) > 1:
                first = p.unflatten(1, part.shape[1:3])[:, :, :width].sum((1, 2))  # (N, K) mass on camera 0
                line[f"mass_on_{cameras[0]}"] = [round(float(m), 2) for m in first.mean(0)]
                line["split_share"] = [round(float(s), 2) for s in ((first > 0.2) & (first < 0.8)).float().mean(0)]
            print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
