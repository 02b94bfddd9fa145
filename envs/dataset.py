"""Demonstrations as LeRobotDataset v3, plus the environment they came from.

Layout: LeRobot's own (`meta/info.json`, `meta/stats.json`, `meta/tasks.parquet`,
`meta/episodes/`, `data/`, `videos/observation.images.<camera>/`), read by
`lerobot.datasets.lerobot_dataset.LeRobotDataset` unchanged, plus `meta/pixio_env.json`:
the `EnvSpec` (id + every option), fps, camera sizes and intrinsics, state/action names, and
per episode its seed, length and success. Features per frame: `observation.images.<camera>`
(video), `observation.state` (`agent_pos`), `observation.environment_state` (when the
environment observes it), `action`, `next.reward`, `next.success`, `next.done`, and the task
string (the environment's instruction).

Crash safety. Episodes are written in segments: a segment resumes the dataset, appends up to
`commit_every` episodes and finalizes it (LeRobot keeps its parquet files open until then).
On Ctrl-C or SIGTERM the current segment is finalized, so every finished episode stays. A
harder kill leaves a journal (`meta/.pixio_journal.json`, with a backup of the few metadata
files LeRobot rewrites); the next `collect` into that path, or `load_dataset`, rolls the
unfinished segment back, leaving every committed episode readable. A new dataset is built in a
hidden folder next to the target and moved into place at its first commit, so a path is never
left half-made.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from pixio_robot import journal
from pixio_robot.atomic import TMP_PREFIX, read_json, write_json
from pixio_robot.errors import PixioError

from .registry import EnvSpec
from .runner import Episode

ENV_FILE = "meta/pixio_env.json"
REWRITTEN = ("meta/info.json", "meta/stats.json", "meta/tasks.parquet", ENV_FILE)  # changed in place
FORMAT = "pixio_robot.envs.dataset/1"
# Camera videos: lossless H.264 in full-resolution colour (4:4:4). LeRobot's default (AV1,
# 4:2:0, crf 30) halves the colour resolution, which at 128x128 moves a small encoder's global
# embedding of a frame by ~45% of the distance between two different scenes (measured on
# rendered reach frames): a policy trained on decoded frames then fails on the rendered frames
# it sees in simulation (2% success instead of the expected). 4:4:4 lossless: ~8% (the RGB to
# YUV rounding), at ~3x the file size of the default.
VIDEO_CODEC = {"vcodec": "h264", "pix_fmt": "yuv444p", "crf": 0}


def video_backend() -> str:
    """torchcodec when it loads here, else pyav (checked quietly, once)."""
    global _BACKEND
    if _BACKEND is None:
        try:
            import torchcodec.decoders  # noqa: F401

            _BACKEND = "torchcodec"
        except Exception:
            _BACKEND = "pyav"
    return _BACKEND


_BACKEND: str | None = None


def env_metadata(spec: EnvSpec, env) -> dict:
    """What a dataset records about its environment (all but the episode list)."""
    base = env.unwrapped
    cameras = {}
    jitter = getattr(base, "camera_jitter", 0.0)
    for name, (h, w) in base.cameras.items():
        info = base.camera_info(name)
        # Fixed: attached to the world and never moved, so cam2world holds for every frame.
        fixed = bool(base.model.cam_bodyid[base.model.camera(name).id] == 0 and not jitter)
        cameras[name] = {
            "height": h,
            "width": w,
            "K": info.K.tolist(),
            "cam2world_at_reset": info.cam2world.tolist(),
            "fixed": fixed,
        }
    return {
        "format": FORMAT,
        "env": spec.to_dict(),
        "name": spec.name,
        "instruction": base.instruction,
        "fps": int(base.control_hz),
        "max_episode_steps": int(base.max_episode_steps),
        "cameras": cameras,
        "state_names": list(base.state_names),
        "action_names": list(base.action_names),
        "environment_state_names": list(base.object_state_names) if base.environment_state else None,
    }


def lerobot_features(meta: dict, env_state_dim: int | None) -> dict:
    features: dict[str, dict] = {}
    for name, cam in meta["cameras"].items():
        features[f"observation.images.{name}"] = {
            "dtype": "video",
            "shape": (cam["height"], cam["width"], 3),
            "names": ["height", "width", "channels"],
        }
    features["observation.state"] = {
        "dtype": "float32",
        "shape": (len(meta["state_names"]),),
        "names": meta["state_names"],
    }
    if env_state_dim:
        names = meta["environment_state_names"]
        features["observation.environment_state"] = {
            "dtype": "float32",
            "shape": (env_state_dim,),
            "names": names if names and len(names) == env_state_dim else None,
        }
    features["action"] = {"dtype": "float32", "shape": (len(meta["action_names"]),), "names": meta["action_names"]}
    features["next.reward"] = {"dtype": "float32", "shape": (1,), "names": None}
    features["next.success"] = {"dtype": "bool", "shape": (1,), "names": None}
    features["next.done"] = {"dtype": "bool", "shape": (1,), "names": None}
    return features


def observation_features(obs: dict, cameras: list[str]) -> dict[str, np.ndarray]:
    """An environment observation under the dataset's feature names, e.g. for a policy trained
    on a recorded dataset: `pixels` -> `observation.images.<camera>` (also with one camera,
    where the observation holds a bare image), `agent_pos` -> `observation.state`,
    `environment_state` -> `observation.environment_state`."""
    pixels = obs.get("pixels")
    if pixels is None:
        pixels = {}
    elif not isinstance(pixels, dict):
        pixels = {cameras[0]: pixels}
    out = {f"observation.images.{c}": pixels[c] for c in cameras if c in pixels}
    out["observation.state"] = obs["agent_pos"]
    if "environment_state" in obs:
        out["observation.environment_state"] = obs["environment_state"]
    return out


# ---- what is at a path ---------------------------------------------------------------------


def inspect_path(root: Path) -> str:
    """One of: missing, empty, ours (a dataset made here), other (anything else)."""
    if not root.exists():
        return "missing"
    if not root.is_dir():
        return "other"
    if not any(root.iterdir()):
        return "empty"
    if (root / ENV_FILE).is_file() and (root / "meta/info.json").is_file():
        return "ours"
    return "other"


def read_env_metadata(root: str | os.PathLike) -> dict:
    """The `meta/pixio_env.json` of a dataset (after rolling back an interrupted segment)."""
    root = Path(root)
    recover(root)
    path = root / ENV_FILE
    if not path.is_file():
        raise PixioError(f"{root}: not a dataset recorded by pixio-robot (no {ENV_FILE})")
    return read_json(path, FORMAT, "the environment record of a pixio-robot dataset")


def dataset_spec(root: str | os.PathLike) -> EnvSpec:
    """The environment a dataset was recorded in: `dataset_spec(root).make()` rebuilds it."""
    return EnvSpec.from_dict(read_env_metadata(root)["env"])


def load_dataset(root: str | os.PathLike, **kwargs):
    """The dataset as lerobot's `LeRobotDataset` (video backend chosen for this machine)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = Path(root)
    meta = read_env_metadata(root)
    kwargs.setdefault("video_backend", video_backend())
    return LeRobotDataset(meta.get("repo_id", f"local/{root.name}"), root=root, **kwargs)


# ---- segments and their roll-back ---------------------------------------------------------


def recover(root: Path) -> bool:
    """Roll back a segment that was interrupted by a hard kill; True if there was one."""
    return journal.rollback(root)


class DemoWriter:
    """Appends episodes to a LeRobot dataset in crash-safe segments (see the module doc).

    Refuses, before writing anything, a path that holds something other than a dataset of the
    same environment, or an existing dataset unless `append=True`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        env_meta: dict,
        env_state_dim: int | None = None,
        append: bool = False,
        commit_every: int = 10,
        collection: dict | None = None,
    ):
        self.root = Path(root).absolute()
        self.commit_every = max(1, int(commit_every))
        state = inspect_path(self.root)
        if state == "other":
            raise PixioError(
                f"{self.root} holds something other than a pixio-robot dataset: refusing to write there "
                "(nothing was changed); choose a new or empty folder"
            )
        if state == "ours":
            recover(self.root)
            old = read_env_metadata(self.root)
            if not append:
                raise PixioError(
                    f"{self.root} already holds a dataset ({len(old['episodes'])} episodes): pass append=true "
                    "to add episodes, or choose a new folder (nothing was changed)"
                )
            mine, theirs = EnvSpec.from_dict(env_meta["env"]), EnvSpec.from_dict(old["env"])
            try:
                mine.check_compatible(theirs, what="the dataset")
            except PixioError as e:
                raise PixioError(f"cannot append: {e} (nothing was changed)") from None
            self.meta = old
        else:
            self.meta = {
                **env_meta,
                "repo_id": f"local/{self.root.name}",
                "collection": collection or {},
                "episodes": [],
            }
        self.features = lerobot_features(self.meta, env_state_dim)
        self._ds = None
        self._staging: Path | None = None
        self._in_segment = 0

    @property
    def episodes(self) -> list[dict]:
        return self.meta["episodes"]

    @property
    def next_seed(self) -> int:
        return max((e["seed"] for e in self.episodes), default=-1) + 1

    def add(self, ep: Episode) -> None:
        if self._ds is None:
            self._begin()
        cameras = list(self.meta["cameras"])
        missing = [c for c in cameras if c not in ep.images]
        if missing:
            raise PixioError(f"episode of seed {ep.seed} has no images of camera {missing[0]!r}: record it with images")
        for t in range(ep.length):
            frame: dict[str, Any] = {f"observation.images.{c}": ep.images[c][t] for c in cameras}
            frame["observation.state"] = ep.states[t]
            if "observation.environment_state" in self.features:
                frame["observation.environment_state"] = ep.env_states[t]
            frame["action"] = ep.actions[t]
            frame["next.reward"] = np.array([ep.rewards[t]], np.float32)
            frame["next.success"] = np.array([ep.successes[t]], bool)
            frame["next.done"] = np.array([t == ep.length - 1], bool)
            frame["task"] = self.meta["instruction"]
            self._ds.add_frame(frame)
        _quiet_encoders()  # (LeRobot turns the `datasets` bars back on whenever it loads metadata)
        # One process: LeRobot's parallel encoding starts a process pool per episode, which
        # costs more than encoding these small videos.
        self._ds.save_episode(parallel_encoding=False)
        index = len(self.episodes)
        self.episodes.append({"episode_index": index, "seed": ep.seed, "length": ep.length, "success": ep.success})
        self._in_segment += 1
        if self._in_segment >= self.commit_every:
            self.commit()

    def _begin(self) -> None:
        from lerobot.configs.video import RGBEncoderConfig
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        if inspect_path(self.root) == "ours":
            journal.begin(self.root, REWRITTEN)  # from here on, rollback-able
            self._ds = LeRobotDataset.resume(
                self.meta["repo_id"],
                root=self.root,
                video_backend=video_backend(),
                rgb_encoder=RGBEncoderConfig(**VIDEO_CODEC),  # every segment lossless, not only the first
            )
        else:
            self._staging = self.root.parent / f"{TMP_PREFIX}{self.root.name}-{uuid.uuid4().hex[:8]}"
            self.root.parent.mkdir(parents=True, exist_ok=True)
            self._ds = LeRobotDataset.create(
                self.meta["repo_id"],
                fps=self.meta["fps"],
                features=self.features,
                root=self._staging,
                robot_type="pixio_arm" if self.meta["env"]["id"] != "pixio_robot/MetaWorld-v3" else "sawyer",
                use_videos=True,
                video_backend=video_backend(),
                rgb_encoder=RGBEncoderConfig(**VIDEO_CODEC),
            )
        self._in_segment = 0

    def commit(self) -> None:
        """Finalize the open segment: from now on its episodes survive anything."""
        if self._ds is None:
            return
        ds, self._ds = self._ds, None
        ds.finalize()
        journal.remove_empty_dirs((self._staging or self.root) / "images")  # LeRobot's frame staging area
        if self._staging is not None:
            if self._in_segment == 0:
                shutil.rmtree(self._staging)
            else:
                write_json(self._staging / ENV_FILE, self.meta)
                os.replace(self._staging, self.root)  # also replaces an empty folder
            self._staging = None
        else:
            write_json(self.root / ENV_FILE, self.meta)
            journal.end(self.root)
        self._in_segment = 0

    def close(self) -> None:
        self.commit()

    def __enter__(self) -> DemoWriter:
        return self

    def __exit__(self, *exc) -> None:
        # Also on errors and Ctrl-C: whatever episodes were saved are committed.
        if self._ds is not None:
            buffer = self._ds.writer.episode_buffer if self._ds.writer is not None else None
            if buffer is not None and "size" not in buffer:
                self.abort()  # LeRobot's save_episode was cut off half-way (it pops "size" first)
                return
            if buffer is not None and buffer["size"] > 0:
                self._ds.clear_episode_buffer()
        self.commit()

    def abort(self) -> None:
        """Drop the open segment, whose files may be half-written: close them, then roll back to
        the last commit (a dataset that never had one is removed)."""
        ds, self._ds = self._ds, None
        with contextlib.suppress(Exception):  # closing what an interrupted write left open
            ds.finalize()
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
        else:
            recover(self.root)
        self._in_segment = 0


def _quiet_encoders() -> None:
    """Video encoders and libav print banners per video, `datasets` a bar per episode: keep
    the terminal to our progress bar (errors still show)."""
    os.environ.setdefault("SVT_LOG", "1")
    with contextlib.suppress(Exception):
        import av.logging

        av.logging.set_libav_level(av.logging.ERROR)  # LeRobot restores libav's own printer
    with contextlib.suppress(Exception):
        import datasets

        datasets.disable_progress_bars()
