"""`pixio-robot render-frames`: pre-training images from the simulated suite, in one command.

    pixio-robot render-frames out=frames/suite            # every own task x difficulty, MetaWorld five
    pixio-robot pretrain data.sources=[frames/suite] run.dir=outputs/pretrain/mine

Noisy scripted-expert episodes (failed ones kept: they show more of the workspace) of every
task, the own tasks at every difficulty level with random lighting and camera jitter, seen from
several cameras including the wrist. Every `frame_stride`-th frame of every camera becomes one
JPEG; all of them are shuffled together (the pre-training loader streams a shard in order, so a
shard must not hold one task) and written as WebDataset shards `frames-000000.tar`, ... of
`shard_size` images, with `frames.json` counting what came from where. The folder appears
whole or not at all; the same command on the same machine writes the same images.
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np

from pixio_robot.atomic import atomic_dir
from pixio_robot.errors import PixioError

from .base import DIFFICULTIES
from .registry import METAWORLD_ID, EnvSpec
from .runner import expert_policy, run_episodes

FORMAT = "pixio_robot.envs.frames/1"


def plan(cfg) -> list[tuple[str, EnvSpec]]:
    """(label, environment) of every task x difficulty the command renders, all checked before
    anything is rendered."""
    if cfg.episodes < 1:
        raise PixioError(f"episodes={cfg.episodes}: render at least 1 episode per task")
    if cfg.frame_stride < 1 or cfg.shard_size < 1:
        raise PixioError("frame_stride and shard_size must be at least 1")
    if not 1 <= cfg.quality <= 100:
        raise PixioError(f"quality={cfg.quality}: JPEG quality is 1 to 100")
    if not cfg.tasks:
        raise PixioError("tasks=[]: name at least one task, e.g. tasks=[push,metaworld/assembly]")
    unknown = sorted(set(cfg.difficulties) - set(DIFFICULTIES))
    if unknown or not cfg.difficulties:
        raise PixioError(f"difficulties={list(cfg.difficulties)}: choose among {', '.join(DIFFICULTIES)}")
    jobs = []
    for task in cfg.tasks:
        probe = EnvSpec.parse(task, cameras=None)
        if probe.id == METAWORLD_ID:  # no lighting, jitter or difficulty options there
            options = {"cameras": list(cfg.metaworld_cameras), "time_limit": cfg.metaworld_time_limit}
            jobs.append((probe.name, EnvSpec.parse(task, image_size=cfg.image_size, **options)))
            continue
        for level in cfg.difficulties:
            options = {"cameras": list(cfg.cameras), "random_lighting": True, "camera_jitter": cfg.camera_jitter}
            spec = EnvSpec.parse(task, image_size=cfg.image_size, difficulty=level, **options)
            jobs.append((f"{probe.name}/{level}", spec))
    for _, spec in jobs:  # a camera the task lacks is refused here, not after minutes of rendering
        spec.make().close()
    return jobs


def render_frames(cfg) -> int:
    from PIL import Image
    from tqdm import tqdm

    out = Path(cfg.out)
    if out.exists():
        raise PixioError(f"{out} exists: choose another out= or remove it (render-frames never adds to a folder)")
    jobs = plan(cfg)
    frames: list[tuple[str, bytes]] = []  # (sample key, JPEG)
    counts: dict[str, dict] = {}
    total = len(jobs) * cfg.episodes
    bar = tqdm(total=total, desc="render-frames", unit="ep", disable=not cfg.progress, file=sys.stderr)
    for label, spec in jobs:
        slug = label.replace("/", "_")
        seeds = range(cfg.seed, cfg.seed + cfg.episodes)
        count = {"episodes": 0, "successes": 0, "frames": 0}
        for ep in run_episodes(spec, seeds, expert_policy(cfg.noise), cfg.workers, record=True):
            count["episodes"] += 1
            count["successes"] += bool(ep.success)
            for camera, video in ep.images.items():
                for t in range(0, len(video), cfg.frame_stride):
                    buf = io.BytesIO()
                    Image.fromarray(video[t]).save(buf, format="JPEG", quality=cfg.quality)
                    frames.append((f"{slug}_{ep.seed:06d}_{camera}_{t:04d}", buf.getvalue()))
                    count["frames"] += 1
            bar.update(1)
        counts[label] = count
    bar.close()
    order = np.random.default_rng([cfg.seed, 3]).permutation(len(frames))
    shards = [order[i : i + cfg.shard_size] for i in range(0, len(order), cfg.shard_size)]
    with atomic_dir(out) as tmp:
        for s, members in enumerate(shards):
            with tarfile.open(tmp / f"frames-{s:06d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
                for i in members:
                    key, data = frames[i]
                    info = tarfile.TarInfo(f"{key}.jpg")
                    info.size, info.mtime = len(data), 0  # fixed times: the same run gives the same bytes
                    tar.addfile(info, io.BytesIO(data))
        meta = {
            "format": FORMAT,
            "images": len(frames),
            "shards": len(shards),
            "image_size": cfg.image_size,
            "tasks": counts,
            "options": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("out", "workers", "progress")},
            "sources": f"{out}/frames-{{000000..{len(shards) - 1:06d}}}.tar",
        }
        (tmp / "frames.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{out}: {len(frames)} images in {len(shards)} shards from {len(jobs)} task settings")
    for label, c in counts.items():
        print(f"  {label:34s} {c['frames']:7d} images, {c['successes']}/{c['episodes']} episodes succeeded")
    return 0
