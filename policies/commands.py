"""The policies package's subcommands: `train-policy`, `eval-policy`, `compare`, `probe`.

Kept free of torch and LeRobot so that `pixio-robot --help` answers at once. The head configs
(plain dataclasses) are registered with Hydra here as the `head` config group's schemas, so
`configs/head/<name>.yaml` and `head=chunking head.chunk_size=10` are checked against them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from pixio_robot.cli import Command
from pixio_robot.errors import PixioError

from .heads import HEAD_CONFIGS

for _name, _schema in HEAD_CONFIGS.items():
    ConfigStore.instance().store(group="head", name=f"{_name}_schema", node=_schema)

VALIDATION_SEED = 50_000  # evaluation during training (model selection)
TEST_SEED = 100_000  # eval-policy's default: disjoint from collection (0..) and validation seeds


@dataclass
class TrainPolicyConfig:
    dataset: str = field(default="???", metadata={"help": "demonstrations: a dataset folder from pixio-robot collect"})
    encoder: str = field(
        default="???",
        metadata={"help": "Pixio checkpoint or size name (vits16: random), timm:<model>, or oracle (the object state)"},
    )
    encoder_init: str = field(default="pretrained", metadata={"help": "pretrained, or random (same architecture)"})
    encoder_weights: str | None = field(default=None, metadata={"help": "weights file for a timm:<model> encoder"})
    layer: int = field(default=-1, metadata={"help": "encoder block the head reads (negative from the end)"})
    image_size: int | None = field(default=None, metadata={"help": "encoder input size (default: the dataset's)"})
    cameras: list[str] | None = field(
        default=None, metadata={"help": "cameras the head reads, e.g. [front,wrist] (default: the dataset's first)"}
    )
    head: Any = field(
        default=None,
        metadata={"help": "cortexbench (default), keypoints, spatial or chunking; head.<option>=... sets its options"},
    )
    cache: str = field(
        default="auto", metadata={"help": "feature cache: auto, off (encode images every step), or a folder"}
    )
    cache_dtype: str = field(default="float16", metadata={"help": "float16 or float32 cached features"})
    augment: bool = field(default=True, metadata={"help": "random 4-px shifts of the images (cache=off only)"})
    epochs: int = field(default=100, metadata={"help": "passes over the demonstrations"})
    lr_schedule: str = field(
        default="constant", metadata={"help": "constant (eai-vc, ACT) or cosine (decays to 0 over the epochs)"}
    )
    batch_size: int = field(default=256, metadata={"help": "samples per step"})
    consecutive: int = field(
        default=1,
        metadata={
            "help": "batches of runs of this many consecutive frames of one episode (1: shuffled frames); "
            "overlapping history windows then share frames, each coded once"
        },
    )
    seed: int = field(default=100, metadata={"help": "seed of initialisation, shuffling, random encoders"})
    eval_every: int = field(default=0, metadata={"help": "evaluate in simulation every this many epochs (0: never)"})
    eval_episodes: int = field(default=10, metadata={"help": "episodes per evaluation during training"})
    eval_workers: int = field(default=1, metadata={"help": "environment processes for those evaluations"})
    test_episodes: int = field(
        default=0,
        metadata={
            "help": "at the end, eval-policy of the best checkpoint on this many held-out episodes (into out/eval)"
        },
    )
    save_every: int = field(default=10, metadata={"help": "save the last checkpoint every this many epochs"})
    out: str = field(default="???", metadata={"help": "run folder (checkpoints, metrics.csv, training.rrd)"})
    resume: bool = field(default=False, metadata={"help": "continue the run in out= from its last checkpoint"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, ..."})
    threads: int | None = field(default=None, metadata={"help": "torch threads (default: torch's, all cores)"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})


@dataclass
class EvalPolicyConfig:
    policy: str = field(default="???", metadata={"help": "policy checkpoint folder, or expert (the scripted expert)"})
    env: str | None = field(default=None, metadata={"help": "environment (default: the policy's own)"})
    episodes: int = field(default=50, metadata={"help": "episodes to run"})
    seed: int = field(default=TEST_SEED, metadata={"help": "first episode seed (held out from collection)"})
    workers: int = field(default=1, metadata={"help": "parallel environment processes"})
    threads: int = field(default=1, metadata={"help": "torch threads per environment process"})
    videos: int = field(default=3, metadata={"help": "MP4s of the first this many episodes"})
    record: int = field(default=2, metadata={"help": "episodes logged to a Rerun recording"})
    time_limit: int | None = field(default=None, metadata={"help": "episode step limit (default: the environment's)"})
    image_size: int | None = field(default=None, metadata={"help": "image size (policy=expert only)"})
    cameras: list[str] | None = field(default=None, metadata={"help": "cameras (policy=expert only)"})
    label: str | None = field(default=None, metadata={"help": "name in compare tables (default: from the policy)"})
    out: str = field(default="???", metadata={"help": "result folder: result.json, videos/, episodes.rrd"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing result"})
    device: str = field(default="cpu", metadata={"help": "device of the policy"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})


@dataclass
class CompareConfig:
    results: list[str] = field(default_factory=list, metadata={"help": "result.json files (or their folders)"})
    out: str = field(default="compare.png", metadata={"help": "bar chart PNG (a .md table is written next to it)"})
    title: str | None = field(default=None, metadata={"help": "chart title"})


@dataclass
class ProbeConfig:
    encoder: str = field(default="sim_vitn16_v2", metadata={"help": "Pixio checkpoint, bundled name or size name"})
    env: str = field(default="push", metadata={"help": "environment whose reset scenes are rendered"})
    difficulty: str | None = field(default=None, metadata={"help": "own tasks: benchmark (default) or hard"})
    scenes: int = field(default=1000, metadata={"help": "scenes rendered (seeds from `seed` on)"})
    holdout: float = field(default=0.2, metadata={"help": "fraction of the scenes held out for the errors"})
    camera: str | None = field(default=None, metadata={"help": "camera (default: the environment's first)"})
    image_size: int | None = field(default=None, metadata={"help": "image side (default: the encoder's)"})
    seed: int = field(default=200_000, metadata={"help": "first scene seed (disjoint from collection/evaluation)"})
    block: int = field(default=-1, metadata={"help": "block whose patch tokens are read (0-based; -1: the last)"})
    random_seed: int = field(default=0, metadata={"help": "seed of the first random-initialised comparison encoder"})
    random_inits: int = field(
        default=5, metadata={"help": "random-initialised encoders (seeds random_seed, +1, ...) averaged"}
    )
    compare_random: bool = field(default=True, metadata={"help": "also probe the same architecture, random"})
    out: str | None = field(default=None, metadata={"help": "JSON file for the result"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, ..."})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})


def command_config(name: str, schema: type, cfg, options: dict):
    """A command's config from a config object or keyword options (not both), for the
    function form of a command (`train_policy(...)`, `eval_policy(...)`). Keyword options go
    through the same Hydra composition as the command line (a head given by name selects the
    `head` group's option, as `head=keypoints` does)."""
    if cfg is not None and options:
        raise TypeError("pass a config or keyword options, not both")
    if cfg is None:
        names = {f.name for f in dataclasses.fields(schema)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise PixioError(f"unknown option {unknown[0]!r}: options are {', '.join(sorted(names))}")
        from pixio_robot.config import compose_config

        values = dict(options)
        head = values.get("head")
        overrides = [f"head={values.pop('head')}"] if isinstance(head, str) else []
        cfg = compose_config(name, schema, overrides, values)
    missing = [f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) == "???"]
    if missing:
        raise PixioError(f"missing option {missing[0]}=...")
    return cfg


train_policy = Command(
    "train-policy",
    "train a behaviour-cloning head on a frozen encoder from a demonstration dataset",
    TrainPolicyConfig,
    "policies.train:run",
)
eval_policy = Command(
    "eval-policy",
    "success rate of a policy (or the scripted expert) in simulation, with videos and a recording",
    EvalPolicyConfig,
    "policies.evaluation:run",
)
probe = Command(
    "probe",
    "how well an encoder localises objects: ridge probes from its tokens to object positions, in cm",
    ProbeConfig,
    "policies.probe:run",
)
compare = Command(
    "compare",
    "table and bar chart (with 95% intervals) of several eval-policy results",
    CompareConfig,
    "policies.compare:run",
    positional="results",
)
