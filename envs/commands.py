"""The envs package's subcommands: `collect`, `capture`, `render-frames`, `replay` (options and where each runs).

Kept free of heavy imports so `pixio-robot --help` answers at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pixio_robot.cli import Command

ENV_HELP = "reach, push, pick_place, stack, drawer_open, or metaworld/<task> (e.g. metaworld/assembly)"


@dataclass
class EnvOptions:
    """Environment options shared by the commands (unset: the environment's default)."""

    env: str = field(default="???", metadata={"help": ENV_HELP})
    cameras: list[str] | None = field(
        default=None, metadata={"help": "cameras, e.g. [front,wrist] (default: front; MetaWorld corner2)"}
    )
    image_size: int = field(default=128, metadata={"help": "image height (and width) in pixels"})
    image_width: int | None = field(default=None, metadata={"help": "image width, when not square"})
    control_hz: int | None = field(default=None, metadata={"help": "control rate (own tasks; default 20)"})
    time_limit: int | None = field(default=None, metadata={"help": "episode time limit in steps"})
    success_hold: int | None = field(
        default=None,
        metadata={"help": "steps an episode goes on after success before it ends (own tasks 5, MetaWorld 0)"},
    )
    environment_state: bool = field(default=False, metadata={"help": "also record the object state"})
    random_lighting: bool = field(default=False, metadata={"help": "random light per episode (own tasks)"})
    camera_jitter: float = field(default=0.0, metadata={"help": "random camera offset in metres (own tasks)"})
    difficulty: str | None = field(
        default=None, metadata={"help": "own tasks: benchmark (default; ~10 cm ranges) or hard (the whole table)"}
    )

    def env_options(self) -> dict:
        """The options that were set (MetaWorld refuses those it does not have)."""
        options = {"image_size": self.image_size if self.image_width is None else [self.image_size, self.image_width]}
        if self.cameras is not None:
            options["cameras"] = list(self.cameras)
        for key in ("control_hz", "time_limit", "success_hold", "difficulty"):
            if getattr(self, key) is not None:
                options[key] = getattr(self, key)
        for key in ("environment_state", "random_lighting", "camera_jitter"):
            if getattr(self, key):
                options[key] = getattr(self, key)
        return options


@dataclass
class CollectConfig(EnvOptions):
    episodes: int = field(default=50, metadata={"help": "episodes to add to the dataset"})
    out: str = field(default="???", metadata={"help": "dataset folder (LeRobotDataset v3)"})
    seed: int | None = field(default=None, metadata={"help": "first seed (default 0, or after the dataset's last)"})
    workers: int = field(default=1, metadata={"help": "parallel environment processes"})
    noise: float = field(default=0.0, metadata={"help": "std of Gaussian noise on the expert's motion actions"})
    mistakes: float = field(
        default=0.0,
        metadata={
            "help": "pick_place, stack: probability per episode of one descent beside the cube, executed but not "
            "recorded (the recorded actions rise and approach again)"
        },
    )
    keep_failed: bool = field(default=False, metadata={"help": "also keep episodes that did not succeed"})
    append: bool = field(default=False, metadata={"help": "add episodes to an existing dataset"})
    commit_every: int = field(default=10, metadata={"help": "episodes per crash-safe commit"})
    max_attempts: int | None = field(default=None, metadata={"help": "give up after this many episodes"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})


@dataclass
class CaptureConfig(EnvOptions):
    scenes: int = field(default=10, metadata={"help": "scenes to capture"})
    views: int = field(default=8, metadata={"help": "cameras per scene, on a hemisphere"})
    out: str = field(default="???", metadata={"help": "folder of scene folders"})
    image_size: int = field(default=256, metadata={"help": "image height (and width) in pixels"})
    seed: int | None = field(default=None, metadata={"help": "first scene seed (default 0, or after the last)"})
    radius: list[float] = field(default_factory=lambda: [0.6, 1.0], metadata={"help": "camera distance range (m)"})
    elevation: list[float] = field(default_factory=lambda: [20.0, 70.0], metadata={"help": "elevation range (deg)"})
    fovy: float = field(default=50.0, metadata={"help": "vertical field of view of the views (deg)"})
    azimuth_span: float = field(
        default=360.0, metadata={"help": "views spread over an arc this wide (deg; 360: all around the scene)"}
    )
    expert_steps: int = field(default=20, metadata={"help": "run the expert up to this many steps first"})
    workers: int = field(default=1, metadata={"help": "parallel processes"})
    append: bool = field(default=False, metadata={"help": "add scenes to an existing capture folder"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})


OWN_AND_CORTEXBENCH = [
    "reach", "push", "pick_place", "stack", "drawer_open",
    *(f"metaworld/{t}" for t in ("assembly", "bin-picking", "button-press-topdown", "drawer-open", "hammer")),
]  # fmt: skip


@dataclass
class FramesConfig:
    out: str = field(default="???", metadata={"help": "new folder for the WebDataset shards and frames.json"})
    tasks: list[str] = field(
        default_factory=lambda: list(OWN_AND_CORTEXBENCH),
        metadata={"help": "own tasks and metaworld/<task> (default: all five own, the CortexBench five)"},
    )
    difficulties: list[str] = field(
        default_factory=lambda: ["benchmark", "hard"], metadata={"help": "levels of the own tasks"}
    )
    cameras: list[str] = field(
        default_factory=lambda: ["front", "corner", "side", "top", "wrist"], metadata={"help": "own-task cameras"}
    )
    metaworld_cameras: list[str] = field(
        default_factory=lambda: ["corner", "corner2", "corner3", "topview", "gripperPOV"],
        metadata={"help": "MetaWorld cameras"},
    )
    episodes: int = field(default=40, metadata={"help": "expert episodes per task and difficulty"})
    frame_stride: int = field(default=2, metadata={"help": "keep every n-th frame of an episode"})
    image_size: int = field(default=128, metadata={"help": "image height and width in pixels"})
    noise: float = field(default=0.3, metadata={"help": "expert action noise (failed episodes are kept)"})
    camera_jitter: float = field(default=0.03, metadata={"help": "random camera offset in metres (own tasks)"})
    metaworld_time_limit: int = field(default=100, metadata={"help": "MetaWorld episode length cap in steps"})
    seed: int = field(default=1000, metadata={"help": "first episode seed of every task"})
    quality: int = field(default=95, metadata={"help": "JPEG quality"})
    shard_size: int = field(default=1000, metadata={"help": "images per shard"})
    workers: int = field(default=1, metadata={"help": "parallel environment processes"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})


@dataclass
class ReplayConfig:
    source: str = field(default="???", metadata={"help": f"a dataset folder, or an environment ({ENV_HELP})"})
    out: str = field(default="replay.rrd", metadata={"help": "Rerun recording to write"})
    episodes: list[int] = field(default_factory=lambda: [0], metadata={"help": "episode indices (dataset)"})
    seed: int = field(default=0, metadata={"help": "episode seed (environment)"})
    cameras: list[str] | None = field(default=None, metadata={"help": "cameras to show (environment)"})
    image_size: int = field(default=128, metadata={"help": "image size (environment)"})
    noise: float = field(default=0.0, metadata={"help": "expert action noise (environment)"})


collect = Command(
    "collect",
    "record scripted-expert demonstrations into a LeRobotDataset v3 (parallel, resumable)",
    CollectConfig,
    "envs.collect:collect",
)
capture = Command(
    "capture",
    "capture multi-view RGB, depth, segmentation and cameras of random scenes (one folder per scene)",
    CaptureConfig,
    "envs.capture:capture",
)
render_frames = Command(
    "render-frames",
    "pre-training images: expert episodes of every task x difficulty x camera as WebDataset shards",
    FramesConfig,
    "envs.frames:render_frames",
)
replay = Command(
    "replay",
    "replay a dataset's episodes, or a fresh expert episode, into a Rerun recording",
    ReplayConfig,
    "envs.replay:replay",
    positional="source",
)
