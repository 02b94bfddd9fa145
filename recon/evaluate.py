"""`pixio-robot eval-recon`: the MapAnything metrics and cloud metrics on held-out scenes.

    pixio-robot eval-recon checkpoint=runs/recon/model.safetensors data=[captures/test] views=[2,4]

For each number of views, every scene with enough views gives `sets_per_scene` fixed view
subsets (from `seed`); per set the six metrics of `recon.metrics` and the Chamfer distance and
F-score of the fused metric cloud (pixels the head marks as surface) against the ground-truth
cloud (valid depth), both in view 0's frame, every point of each (`max_points` samples them, which
reads the F-score low: the ground truth against itself scores about 95, not 100, at 20000 of 30000
points). Sets are averaged per number of views. Results go to a JSON file and a printed table.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pixio_robot.atomic import write_json
from pixio_robot.config import to_dict
from pixio_robot.devices import torch_threads
from pixio_robot.errors import PixioError

from .commands import EvalReconConfig
from .data import SceneData, load_scenes
from .infer import Reconstructor
from .metrics import average, cloud_metrics, format_table, pose_extras, set_metrics, standard_error
from .sampling import collate, fixed_view_sets
from .tokens import default_cache_dir


@torch.no_grad()
def evaluate(
    rec: Reconstructor,
    scenes: list[SceneData],
    views: list[int],
    sets_per_scene: int = 1,
    seed: int = 0,
    intrinsics: bool = False,
    fscore_threshold: float = 0.01,
    max_points: int | None = None,
    progress: bool = False,
) -> dict[str, dict]:
    """{"<n> views": {metric: mean, ..., "sets": count, "scenes": count, "stderr": {metric: standard
    error of the mean over sets}, "per_set": [{"scene", "views", metric: value, ...}]}} for each n
    in `views`. The per-set rows let two runs on the same sets be compared pair by pair, which is
    far tighter than comparing their means (README, every point scored)."""
    bar = dict(disable=not progress, file=sys.stderr)
    tokens = [rec.cache.tokens(s) for s in tqdm(scenes, desc="tokens", unit="scene", **bar)]
    mirrored = [rec.cache.tokens(s, mirrored=True) for s in scenes] if rec.flip else None
    results = {}
    for n in views:
        sets = fixed_view_sets([s.num_views for s in scenes], n, sets_per_scene, seed)
        if not sets:
            print(f"warning: no scene has {n} views: no row for {n} views", file=sys.stderr)
            continue
        rows = []
        for k, view_set in enumerate(tqdm(sets, desc=f"{n} views", unit="set", **bar)):
            x, tgt = collate([view_set], tokens, scenes)
            x_flip = None if mirrored is None else mirrored[view_set[0]][torch.as_tensor(view_set[1])][None]
            out = rec.predict(x, tgt.K if intrinsics else None, x_flip)
            pred_c2w, gt_c2w = out.cam2world()[0].double().cpu().numpy(), tgt.cam2world[0].double().numpy()
            row = set_metrics(
                out.points()[0].double().cpu().numpy(),
                out.camera_points()[0].double().cpu().numpy(),
                float(out.scale[0]),
                pred_c2w,
                tgt.points()[0].double().numpy(),
                tgt.camera_points()[0].double().numpy(),
                gt_c2w,
                tgt.valid[0].numpy(),
            )
            if math.isfinite(row["pose_auc5"]):  # NaN: a view without ground truth, or 1 view
                row |= pose_extras(pred_c2w, gt_c2w)
            rng = np.random.default_rng([seed, n, k])
            pred = out.points(metric=True)[0][out.mask_logits[0] > 0].double().cpu().numpy()
            gt = tgt.points()[0][tgt.valid[0]].double().numpy()
            pred, gt = sample_points(pred, max_points, rng), sample_points(gt, max_points, rng)
            row |= cloud_metrics(pred, gt, fscore_threshold)
            rows.append(row)
        used = len({view_set[0] for view_set in sets})
        per_set = [
            {"scene": str(scenes[i].path), "views": [int(v) for v in vs]} | row
            for (i, vs), row in zip(sets, rows, strict=True)
        ]
        results[f"{n} views"] = average(rows) | {
            "sets": len(rows),
            "scenes": used,
            "stderr": standard_error(rows),
            "per_set": per_set,
        }
    return results


def _finite(value):
    """JSON has no NaN: undefined metrics (and standard errors) become null, at any depth."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def sample_points(points: np.ndarray, n: int | None, rng: np.random.Generator) -> np.ndarray:
    """At most n of the (N, 3) points (all with n=None), drawn without replacement. The two clouds
    are drawn independently, so a sampled point's true twin is often left out and its neighbour
    a pixel's width away: with a cap the F-score@1cm of a perfect cloud falls below 100."""
    if n is None or len(points) <= n:
        return points
    return points[rng.choice(len(points), n, replace=False)]


def evaluate_checkpoint(
    checkpoint: str | os.PathLike | Reconstructor,
    data: str | os.PathLike | Sequence[str | os.PathLike],
    views: Sequence[int] = (2, 4),
    *,
    sets_per_scene: int = 1,
    scenes: int | None = None,
    seed: int = 0,
    intrinsics: bool = False,
    fscore_threshold: float = 0.01,
    max_points: int | None = None,
    encoder: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: str = "auto",
    threads: int | None = None,
    progress: bool = False,
    flip: bool = False,
) -> dict[str, dict]:
    """Metrics of a head (model.safetensors, or a loaded `Reconstructor`) on held-out scenes
    (capture folders, folders of scene folders or scene folders, with depth and poses).

    Returns {"<n> views": {"scale_rel", "points_rel", "points_tau", "pose_auc5", "depth_rel",
    "depth_tau", "chamfer", "fscore", "sets", "scenes", "stderr", "per_set"}} for each n in `views` that some scene
    has; `cache_dir` keeps the scenes' tokens on disk (None: computed in memory); `flip`:
    test-time flip (a given `Reconstructor` keeps its own setting)."""
    if not views or min(views) < 1:
        raise PixioError(f"views={list(views)}: give numbers of views per set, e.g. views=[2,4]")
    if max_points is not None and max_points < 1:
        raise PixioError(f"max_points={max_points}: give a positive number of points, or null for every point")
    with torch_threads(threads):
        rec = Reconstructor.from_checkpoint(checkpoint, encoder, device, cache_dir, flip)
        loaded = load_scenes(data, rec.image_size, geometry=True, limit=scenes, progress=progress)
        results = evaluate(
            rec, loaded, list(views), sets_per_scene, seed, intrinsics, fscore_threshold, max_points, progress
        )
    if not results:
        raise PixioError(f"no scene has {min(views)} or more views: nothing to evaluate")
    return results


def run_eval(cfg: EvalReconConfig) -> int:
    if cfg.out and Path(cfg.out).exists() and not cfg.overwrite:
        raise PixioError(f"{cfg.out} exists: pass overwrite=true to replace it, or choose another out=")
    results = evaluate_checkpoint(
        cfg.checkpoint,
        cfg.data,
        cfg.views,
        sets_per_scene=cfg.sets_per_scene,
        scenes=cfg.scenes,
        seed=cfg.seed,
        intrinsics=cfg.intrinsics,
        fscore_threshold=cfg.fscore_threshold,
        max_points=cfg.max_points,
        encoder=cfg.encoder,
        cache_dir=cfg.cache_dir or default_cache_dir(),
        device=cfg.device,
        threads=cfg.threads,
        progress=cfg.progress,
        flip=cfg.flip,
    )
    print(format_table(results))
    print("standard error of each mean over the sets:")
    print(format_table({name: r["stderr"] for name, r in results.items()}))
    if cfg.out:
        clean = {k: _finite(r) for k, r in results.items()}
        write_json(cfg.out, {"options": to_dict(cfg), "results": clean})
        print(f"wrote {cfg.out}")
    return 0
