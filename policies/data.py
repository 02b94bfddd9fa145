"""Demonstrations for behaviour cloning: a recorded LeRobot dataset as arrays and sample windows.

`Demonstrations.load(root, cameras)` reads a dataset written by `pixio-robot collect` (through
`envs.dataset.load_dataset`, i.e. LeRobot's own reader): per-frame states and actions, episode
boundaries, the dataset's normalisation statistics (`meta/stats.json`), the environment it was
recorded in, and - on request - every frame of one of the cameras, decoded once in file order.

A training sample is a frame index `i`; its windows follow the policy config's LeRobot delta
indices (`Demonstrations.windows`, LeRobot's rule): the observation history is frames
`i-T+1 .. i` of the same episode (repeating the episode's first frame before it starts), the
target the actions `i .. i+k-1` (positions past the episode's end are padding, masked out of
the loss).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pixio_robot.errors import PixioError


@dataclass
class Demonstrations:
    root: Path
    meta: dict  # meta/pixio_env.json
    cameras: list[str]  # the ones asked for (default: the dataset's first)
    states: np.ndarray  # (N, S) float32
    actions: np.ndarray  # (N, A) float32
    episode_start: np.ndarray  # (N,) int64: first frame of each frame's episode
    episode_end: np.ndarray  # (N,) int64: one past its last frame
    stats: dict  # feature -> {"mean", "std", ...} as float32 arrays
    env_states: np.ndarray | None  # (N, E) float32 observation.environment_state, when recorded
    # camera -> per episode: (file, from_timestamp, to_timestamp)
    video_files: dict[str, list[tuple[Path, float, float]]]

    @classmethod
    def load(cls, root: str | os.PathLike, cameras: str | list[str] | None = None) -> Demonstrations:
        """The dataset at `root`, read through `cameras` (one name or several; default: its first)."""
        import envs

        root = Path(root)
        if not root.exists():
            raise PixioError(f"dataset={root}: no such folder: record one with pixio-robot collect")
        if root.is_dir() and not any(root.iterdir()):
            raise PixioError(
                f"dataset={root} is an empty folder: record demonstrations into it with pixio-robot collect"
            )
        meta = envs.read_env_metadata(root)
        cameras = _check_cameras(root, meta, cameras)
        if not meta.get("episodes"):
            raise PixioError(f"dataset={root} holds no episodes: record demonstrations with pixio-robot collect")
        current = list(envs.EnvSpec.from_dict(meta["env"]).state_names)
        if list(meta["state_names"]) != current:
            raise PixioError(
                f"dataset={root} was recorded with an older observation.state ({', '.join(meta['state_names'])}); "
                f"this version records {', '.join(current)}: re-record it with pixio-robot collect"
            )
        ds = envs.load_dataset(root)
        if ds.num_frames == 0:
            raise PixioError(f"dataset={root} holds no frames: record demonstrations with pixio-robot collect")
        wanted = ["observation.state", "action", "observation.environment_state"]
        wanted = [c for c in wanted if c in ds.hf_dataset.column_names]
        # One batch read of the columns: indexing a column instead converts row by row (15 s
        # per column for 16k frames, more than a policy's training on 2 cores).
        table = ds.hf_dataset.with_format("numpy", columns=wanted)[:]
        states = np.asarray(table["observation.state"], np.float32)
        actions = np.asarray(table["action"], np.float32)
        env_states = table.get("observation.environment_state")
        env_states = None if env_states is None else np.asarray(env_states, np.float32)
        if actions.shape[1] != len(meta["action_names"]):
            raise PixioError(
                f"dataset={root}: actions are {actions.shape[1]}-d but its environment {meta['name']} takes "
                f"{len(meta['action_names'])}-d actions: the dataset does not belong to that environment"
            )
        episodes = ds.meta.episodes
        start = np.asarray(episodes["dataset_from_index"], np.int64)
        stop = np.asarray(episodes["dataset_to_index"], np.int64)
        lengths = stop - start
        videos = {camera: _episode_videos(root, ds, f"observation.images.{camera}") for camera in cameras}
        stats = {
            k: {s: np.asarray(v, np.float32) for s, v in d.items()}
            for k, d in ds.meta.stats.items()
            if k in ("observation.state", "action", "observation.environment_state")
        }
        return cls(
            root=root,
            meta=meta,
            cameras=cameras,
            states=states,
            actions=actions,
            episode_start=np.repeat(start, lengths),
            episode_end=np.repeat(stop, lengths),
            stats=stats,
            env_states=env_states,
            video_files=videos,
        )

    # ---- what it is ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def num_episodes(self) -> int:
        return len(self.video_files[self.cameras[0]])

    @property
    def fps(self) -> int:
        return int(self.meta["fps"])

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W) of the frames (the cameras read have one size: `load` checks it)."""
        cam = self.meta["cameras"][self.cameras[0]]
        return int(cam["height"]), int(cam["width"])

    @property
    def spec(self):
        """The `envs.EnvSpec` the demonstrations were recorded in."""
        import envs

        return envs.EnvSpec.from_dict(self.meta["env"])

    def fingerprint(self) -> str:
        """Changes whenever the recorded content does (episodes added, re-recorded, other options)."""
        h = hashlib.sha256(json.dumps(self.meta, sort_keys=True).encode())
        h.update(f"{len(self)}".encode())
        return h.hexdigest()

    # ---- frames ----------------------------------------------------------------------------

    def decode_frames(self, camera: str | None = None) -> np.ndarray:
        """Every frame of `camera` (default: the first one read), (N, H, W, 3) uint8, in dataset order.

        Each video file is decoded once, front to back (LeRobot's per-item access seeks and
        decodes around every frame, which costs ~100x more for a whole dataset)."""
        import av

        h, w = self.image_shape
        out = np.empty((len(self), h, w, 3), np.uint8)
        by_file: dict[Path, list[tuple[int, float, float]]] = {}
        starts = np.unique(self.episode_start)
        for e, (path, t0, t1) in enumerate(self.video_files[camera or self.cameras[0]]):
            by_file.setdefault(path, []).append((int(starts[e]), t0, t1))
        half_frame = 0.5 / self.fps
        for path, spans in by_file.items():
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                frames, times = [], []
                for frame in container.decode(stream):
                    frames.append(frame.to_ndarray(format="rgb24"))
                    times.append(float(frame.pts * stream.time_base))
            times = np.asarray(times)
            for first, t0, t1 in spans:
                picked = np.flatnonzero((times >= t0 - half_frame) & (times < t1 - half_frame))
                n = int(self.episode_end[first] - first)
                if len(picked) != n:
                    raise PixioError(f"{path}: {len(picked)} frames between {t0:.3f}s and {t1:.3f}s, expected {n}")
                out[first : first + n] = np.stack([frames[i] for i in picked])
        return out

    # ---- sample windows --------------------------------------------------------------------

    def windows(self, index: torch.Tensor, deltas: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """LeRobot's delta-index windows of frames `index`, batched: (B, len(deltas)) frame
        indices clamped to each frame's episode, and True where a position falls outside it
        (padding). The same rule as `LeRobotDataset`'s query indices; `deltas` come from the
        policy config's `observation_delta_indices` / `action_delta_indices`."""
        start = torch.from_numpy(self.episode_start)[index][:, None]
        end = torch.from_numpy(self.episode_end)[index][:, None]
        idx = index[:, None] + torch.as_tensor(deltas)
        return torch.clamp(idx, start, end - 1), (idx < start) | (idx >= end)


def _check_cameras(root: Path, meta: dict, cameras: str | list[str] | None) -> list[str]:
    """The cameras to read (default: the dataset's first), each recorded, all of one size."""
    recorded = list(meta["cameras"])
    cameras = [cameras] if isinstance(cameras, str) else list(cameras or recorded[:1])
    for camera in cameras:
        if camera not in recorded:
            have = ", ".join(recorded) if recorded else "none"
            raise PixioError(
                f"dataset={root} has no camera {camera!r} (it has: {have}): pass cameras=[...] of those, "
                "or record the dataset with that camera (collect cameras=[...])"
            )
    if not cameras or len(set(cameras)) != len(cameras):
        raise PixioError(f"cameras={cameras}: name one or more different cameras")
    sizes = {c: (meta["cameras"][c]["height"], meta["cameras"][c]["width"]) for c in cameras}
    if len(set(sizes.values())) > 1:
        raise PixioError(
            f"dataset={root}: cameras {', '.join(cameras)} have different image sizes ({sizes}): a policy "
            "reads cameras of one size; record them with one image_size"
        )
    return cameras


def _episode_videos(root: Path, ds, key: str) -> list[tuple[Path, float, float]]:
    """Per episode: the video file holding `key` and the episode's span in it (LeRobot v3
    packs several episodes into one file)."""
    episodes = ds.meta.episodes
    return [
        (
            root / ds.meta.get_video_file_path(e, key),
            float(episodes[f"videos/{key}/from_timestamp"][e]),
            float(episodes[f"videos/{key}/to_timestamp"][e]),
        )
        for e in range(len(episodes["dataset_from_index"]))
    ]
