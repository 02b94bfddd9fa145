"""Episodes into Rerun recordings: camera images, state and actions over time, the tool path in 3D.

    pixio-robot replay data/pick_place episodes=[0,1] out=pick_place.rrd   # from a dataset
    pixio-robot replay stack seed=3 cameras=[front,wrist] out=stack.rrd    # a fresh expert episode
    pixio-robot view pick_place.rrd

Entities: `world/cameras/<camera>` (pinhole with intrinsics and pose, for world-fixed cameras;
the image is drawn in 3D), `cameras/<camera>` (the images), `state/<name>`, `action/<name>`,
`success`, `world/tool` (the tool point now) and `world/tool_path/episode_<i>` (its path).
Timelines: `frame` (running over all logged episodes) and `time` (seconds in the episode).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pixio_robot.errors import PixioError
from pixio_robot.viz import rerun_recording

from .registry import EnvSpec


def log_static(rec, meta: dict) -> None:
    """The world frame and the world-fixed cameras of an environment's metadata (see dataset.py)."""
    import rerun as rr

    rec.log("world", rr.ViewCoordinates.RIGHT_HAND_Z_UP, static=True)
    rec.log("task", rr.TextLog(meta["instruction"]), static=True)
    for name, cam in meta["cameras"].items():
        if not cam.get("fixed", False):
            continue
        T = np.asarray(cam["cam2world_at_reset"])
        rec.log(f"world/cameras/{name}", rr.Transform3D(translation=T[:3, 3], mat3x3=T[:3, :3]), static=True)
        rec.log(
            f"world/cameras/{name}",
            rr.Pinhole(image_from_camera=np.asarray(cam["K"]), resolution=[cam["width"], cam["height"]]),
            static=True,
        )


def log_episode(
    rec,
    meta: dict,
    index: int,
    images: dict[str, np.ndarray],
    states: np.ndarray,
    actions: np.ndarray,
    successes: np.ndarray,
    first_frame: int = 0,
) -> None:
    """One episode: images (camera -> (T, H, W, 3)), states (T, S), actions (T, A), successes (T,)."""
    import rerun as rr

    fps = meta["fps"]
    fixed = {name for name, cam in meta["cameras"].items() if cam.get("fixed", False)}
    for t in range(len(actions)):
        rec.set_time("frame", sequence=first_frame + t)
        rec.set_time("time", duration=t / fps)
        for name, frames in images.items():
            image = rr.Image(frames[t])
            rec.log(f"cameras/{name}", image)
            if name in fixed:
                rec.log(f"world/cameras/{name}", image)
        for name, value in zip(meta["state_names"], states[t], strict=True):
            rec.log(f"state/{name}", rr.Scalars([float(value)]))
        for name, value in zip(meta["action_names"], actions[t], strict=True):
            rec.log(f"action/{name}", rr.Scalars([float(value)]))
        rec.log("success", rr.Scalars([float(successes[t])]))
        rec.log("world/tool", rr.Points3D(states[t : t + 1, :3], radii=0.008, colors=[[255, 80, 40]]))
    rec.log(
        f"world/tool_path/episode_{index}",
        rr.LineStrips3D([states[:, :3]], radii=0.002, colors=[[255, 160, 40]]),
        static=True,
    )


def dataset_to_rerun(root: str | os.PathLike, out: str | os.PathLike, episodes: list[int]) -> Path:
    """Episodes of a recorded dataset (decoded from its videos) into a recording."""
    from .dataset import load_dataset, read_env_metadata

    meta = read_env_metadata(root)
    ds = load_dataset(root)
    n = ds.num_episodes
    bad = [e for e in episodes if not 0 <= e < n]
    if bad:
        raise PixioError(f"episode {bad[0]} is not in {root}: it has episodes 0 to {n - 1}")
    cams = list(meta["cameras"])
    with rerun_recording(out, application_id="pixio_robot_replay") as rec:
        log_static(rec, meta)
        frame = 0
        for e in episodes:
            start = int(ds.meta.episodes["dataset_from_index"][e])
            stop = int(ds.meta.episodes["dataset_to_index"][e])
            items = [ds[i] for i in range(start, stop)]
            images = {
                c: np.stack(
                    [
                        (it[f"observation.images.{c}"].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
                        for it in items
                    ]
                )
                for c in cams
            }
            states = np.stack([it["observation.state"].numpy() for it in items])
            actions = np.stack([it["action"].numpy() for it in items])
            successes = np.array([bool(it["next.success"]) for it in items])
            log_episode(rec, meta, e, images, states, actions, successes, frame)
            frame += len(items)
    return Path(out)


def episode_to_rerun(spec: EnvSpec, out: str | os.PathLike, seed: int = 0, noise: float = 0.0) -> Path:
    """A fresh scripted-expert episode into a recording."""
    from .dataset import env_metadata
    from .experts import make_expert
    from .runner import rollout

    env = spec.make()
    try:
        meta = env_metadata(spec, env)
        episode = rollout(env, make_expert(env, noise), seed, record=True)
    finally:
        env.close()
    with rerun_recording(out, application_id="pixio_robot_replay") as rec:
        log_static(rec, meta)
        log_episode(rec, meta, 0, episode.images, episode.states, episode.actions, episode.successes)
    return Path(out)


def replay(cfg) -> int:
    source = Path(cfg.source)
    if source.is_dir():
        out = dataset_to_rerun(source, cfg.out, list(cfg.episodes))
        what = f"episodes {list(cfg.episodes)} of {source}"
    else:
        options = {"image_size": cfg.image_size}
        if cfg.cameras is not None:
            options["cameras"] = list(cfg.cameras)
        spec = EnvSpec.parse(cfg.source, **options)
        out = episode_to_rerun(spec, cfg.out, cfg.seed, cfg.noise)
        what = f"a {spec.name} expert episode (seed {cfg.seed})"
    print(f"{out}: {what}; open it with: pixio-robot view {out}")
    return 0
