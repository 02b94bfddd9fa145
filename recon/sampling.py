"""View sets: random subsets for training steps, fixed ones for evaluation, and their batches.

A set is (scene index, view indices); its first view is the reference (view 0) whose camera
frame is the world of the prediction. Every draw comes from (seed, step) or (seed, scene), so
a resumed run or a repeated evaluation sees exactly the same sets.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pixio_robot.errors import PixioError

from . import geometry
from .data import SceneData
from .losses import Targets

ViewSet = tuple[int, np.ndarray]


class ViewSetSampler:
    """Per step: a number of views n in [min_views, max_views], then `batch_size` scenes with at
    least n views and a random ordered subset of n views of each."""

    def __init__(self, num_views: Sequence[int], min_views: int, max_views: int, batch_size: int, seed: int = 0):
        self.num_views = np.asarray(num_views)
        if min_views < 1 or max_views < min_views:
            raise PixioError(f"min_views={min_views}, max_views={max_views}: need 1 <= min_views <= max_views")
        if not len(self.num_views) or self.num_views.max() < min_views:
            raise PixioError(f"no scene has {min_views} views: capture more views per scene or lower min_views")
        self.min_views, self.max_views = min_views, min(max_views, int(self.num_views.max()))
        self.batch_size, self.seed = batch_size, seed

    def __call__(self, step: int) -> list[ViewSet]:
        rng = np.random.default_rng([self.seed, step])
        n = int(rng.integers(self.min_views, self.max_views + 1))
        eligible = np.flatnonzero(self.num_views >= n)
        scenes = rng.choice(eligible, self.batch_size, replace=len(eligible) < self.batch_size)
        return [(int(s), rng.permutation(self.num_views[s])[:n]) for s in scenes]


def fixed_view_sets(num_views: Sequence[int], views: int, sets_per_scene: int = 1, seed: int = 0) -> list[ViewSet]:
    """The evaluation sets: per scene with enough views, `sets_per_scene` ordered subsets."""
    out = []
    for s, v in enumerate(num_views):
        if v < views:
            continue
        rng = np.random.default_rng([seed, s, views])
        out += [(s, rng.permutation(v)[:views]) for _ in range(sets_per_scene)]
    return out


def collate(
    sets: Sequence[ViewSet],
    tokens: Sequence[torch.Tensor],
    scenes: Sequence[SceneData],
    mirrored_tokens: Sequence[torch.Tensor] | None = None,
    mirror: Sequence[bool] | None = None,
) -> tuple[torch.Tensor, Targets]:
    """Stack the sets (all with the same number of views) into model input and ground truth.

    `mirror` (one flag per set, with the scenes' `mirrored_tokens`): those sets become their
    left-right flips, tokens of the flipped images and the mirrored scene's ground truth
    (geometry.mirror_pose): flip augmentation."""
    mirror = [False] * len(sets) if mirror is None else [bool(m) for m in mirror]
    if any(mirror) and mirrored_tokens is None:
        raise PixioError("mirrored view sets need the scenes' mirrored tokens")
    x = torch.stack(
        [(mirrored_tokens if m else tokens)[s][torch.as_tensor(idx)] for (s, idx), m in zip(sets, mirror, strict=True)]
    )
    depth = torch.from_numpy(np.stack([scenes[s].depth[idx] for s, idx in sets]))
    K = torch.from_numpy(np.stack([scenes[s].K[idx] for s, idx in sets]))
    cam2world = torch.from_numpy(np.stack([scenes[s].cam2world[idx] for s, idx in sets]))
    if any(mirror):
        m = torch.tensor(mirror)
        depth = torch.where(m[:, None, None, None], depth.flip(-1), depth)
        K = torch.where(m[:, None, None, None], geometry.mirror_intrinsics(K, depth.shape[-1]), K)
        cam2world = torch.where(m[:, None, None, None], geometry.mirror_pose(cam2world), cam2world)
    return x, Targets.from_views(depth, K, cam2world, torch.tensor([scenes[s].metric for s, _ in sets]))
