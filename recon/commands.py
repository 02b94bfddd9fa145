"""The recon package's subcommands: `train-recon`, `eval-recon`, `recon`, and monocular depth's
`train-depth`, `eval-depth` (options, where each runs).

Kept free of torch so `pixio-robot --help` and option errors answer at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pixio_robot.cli import Command

from .configuration_depth import DepthHeadConfig
from .configuration_recon import ReconConfig


@dataclass
class HeadTrainingConfig:
    """Options every head trained on cached frozen-encoder tokens shares (train-recon, train-depth)."""

    data: list[str] = field(
        default_factory=list, metadata={"help": "capture folders / folders of scene folders (depth: or .txt lists)"}
    )
    out: str = field(default="???", metadata={"help": "run folder (checkpoints, metrics.csv, model.safetensors)"})
    encoder: str = field(default="???", metadata={"help": "frozen encoder: checkpoint file or size name (random)"})
    encoder_init: str = field(default="pretrained", metadata={"help": "pretrained, or random: same architecture"})
    encoder_seed: int = field(default=0, metadata={"help": "seed of a random encoder"})
    image_size: int = field(default=128, metadata={"help": "views are resized to this (multiple of 16)"})
    scenes: int | None = field(default=None, metadata={"help": "use at most this many training scenes"})
    batch_size: int = field(default=8, metadata={"help": "samples per step (recon: view sets; depth: views)"})
    steps: int = field(default=2000, metadata={"help": "optimiser steps in total (raise it to train on)"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warm-up, then cosine decay"})
    seed: int = field(default=0, metadata={"help": "seed of the head's initialisation and the batches"})
    save_every: int = field(default=250, metadata={"help": "steps between checkpoints"})
    log_every: int = field(default=10, metadata={"help": "steps between metrics.csv rows"})
    cache_dir: str | None = field(default=None, metadata={"help": "token cache (default ~/.cache/pixio-robot)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, ..."})
    threads: int | None = field(default=None, metadata={"help": "CPU threads for torch (default: torch's)"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})


@dataclass
class TrainReconConfig(HeadTrainingConfig):
    val: list[str] = field(default_factory=list, metadata={"help": "held-out scenes: loss logged at each save"})
    min_views: int = field(default=2, metadata={"help": "fewest views per training set"})
    max_views: int = field(default=4, metadata={"help": "most views per training set"})
    lr: float = field(default=3e-4, metadata={"help": "peak learning rate (AdamW)"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (not on biases, norms, tokens)"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient norm clip (0: off)"})
    explode_factor: float = field(default=10.0, metadata={"help": "a loss this many times its running mean is bad"})
    explode_patience: int = field(default=5, metadata={"help": "stop after this many bad steps in a row"})
    recon: ReconConfig = field(default_factory=ReconConfig, metadata={"help": "head and loss (configs/recon/)"})
    flip: float = field(default=0.0, metadata={"help": "chance of training on a view set flipped left-right"})
    init: str | None = field(
        default=None, metadata={"help": "start from a trained head (model.safetensors or bundled name): fine-tune"}
    )


@dataclass
class HeadEvalConfig:
    """Options every evaluation of a head on held-out scenes shares (eval-recon, eval-depth)."""

    checkpoint: str = field(default="???", metadata={"help": "model.safetensors of a training run, or a bundled head"})
    data: list[str] = field(default_factory=list, metadata={"help": "held-out capture / scene folders"})
    scenes: int | None = field(default=None, metadata={"help": "use at most this many scenes"})
    out: str | None = field(default=None, metadata={"help": "results JSON (also printed as a table)"})
    cache_dir: str | None = field(default=None, metadata={"help": "token cache (default ~/.cache/pixio-robot)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, ..."})
    threads: int | None = field(default=None, metadata={"help": "CPU threads for torch (default: torch's)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing results file"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})


@dataclass
class EvalReconConfig(HeadEvalConfig):
    checkpoint: str = field(
        default="???", metadata={"help": "model.safetensors of a train-recon run, or recon_sim_vitn16 (bundled)"}
    )
    views: list[int] = field(default_factory=lambda: [2, 4], metadata={"help": "views per set, one row each"})
    sets_per_scene: int = field(default=1, metadata={"help": "view sets drawn per scene"})
    seed: int = field(default=0, metadata={"help": "seed of the view sets"})
    intrinsics: bool = field(default=False, metadata={"help": "give the head the true intrinsics"})
    flip: bool = field(default=False, metadata={"help": "test-time flip: average with the flipped images' prediction"})
    fscore_threshold: float = field(default=0.01, metadata={"help": "F-score distance threshold (m)"})
    max_points: int | None = field(
        default=None, metadata={"help": "sample each cloud to this many points for Chamfer/F-score (null: all)"}
    )
    encoder: str | None = field(default=None, metadata={"help": "override the encoder recorded in the head"})


@dataclass
class ReconCommandConfig:
    images: list[str] = field(default_factory=list, metadata={"help": "image files, or a folder (a scene's rgb/)"})
    checkpoint: str = field(
        default="???", metadata={"help": "model.safetensors of a train-recon run, or recon_sim_vitn16 (bundled)"}
    )
    out: str = field(default="recon.ply", metadata={"help": "coloured point cloud (.ply)"})
    rrd: str | None = field(default="auto", metadata={"help": "Rerun recording (.rrd); auto: next to out=; null: none"})
    views: int | None = field(default=None, metadata={"help": "use the first N views only"})
    intrinsics: str | None = field(
        default=None, metadata={"help": "known K: .npy (3,3)/(V,3,3), an .npz with K, or scene (its cameras.npz)"}
    )
    conf_percentile: float = field(default=10.0, metadata={"help": "drop this % of least confident points"})
    voxel: float = field(default=0.0, metadata={"help": "voxel size (m) for downsampling; 0: off"})
    outliers: bool = field(default=True, metadata={"help": "statistical outlier removal (20 nbrs, 2 std)"})
    flip: bool = field(default=False, metadata={"help": "test-time flip: average with the flipped images' prediction"})
    encoder: str | None = field(default=None, metadata={"help": "override the encoder recorded in the head"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, ..."})
    threads: int | None = field(default=None, metadata={"help": "CPU threads for torch (default: torch's)"})
    overwrite: bool = field(default=False, metadata={"help": "replace existing output files"})


@dataclass
class TrainDepthConfig(HeadTrainingConfig):
    steps: int = field(default=4000, metadata={"help": "optimiser steps in total (the bundled head's 4000)"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (AdamW 0.9, 0.999; official: 1e-4)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not on biases, norms)"})
    depth: DepthHeadConfig = field(default_factory=DepthHeadConfig, metadata={"help": "head (dpt or linear)"})


@dataclass
class EvalDepthConfig(HeadEvalConfig):
    checkpoint: str = field(
        default="???", metadata={"help": "model.safetensors of a train-depth run, or depth_sim_vitn16 (bundled)"}
    )
    data: list[str] = field(
        default_factory=list, metadata={"help": "held-out capture / scene folders, or NYUv2-style .txt lists"}
    )


@dataclass
class DepthCommandConfig:
    images: list[str] = field(default_factory=list, metadata={"help": "image files, or folders of them"})
    checkpoint: str = field(
        default="???", metadata={"help": "model.safetensors of a train-depth run, or depth_sim_vitn16 (bundled)"}
    )
    out: str = field(default="depth", metadata={"help": "output folder: <name>_depth.png (mm), _color.png, .ply, .rrd"})
    intrinsics: str | None = field(
        default=None, metadata={"help": "K (3,3) of the images as given (.npy, or .npz with K): adds .ply and .rrd"}
    )
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, ..."})
    threads: int | None = field(default=None, metadata={"help": "CPU threads for torch (default: torch's)"})
    overwrite: bool = field(default=False, metadata={"help": "replace existing output files"})


train_recon = Command(
    "train-recon",
    "train a multi-view reconstruction head on frozen Pixio tokens (resumable)",
    TrainReconConfig,
    "recon.train:run_train",
)
eval_recon = Command(
    "eval-recon",
    "evaluate a reconstruction head: the MapAnything metrics, Chamfer and F-score",
    EvalReconConfig,
    "recon.evaluate:run_eval",
)
recon = Command(
    "recon",
    "reconstruct images into a coloured point cloud (.ply) and a Rerun recording",
    ReconCommandConfig,
    "recon.infer:run_recon",
    positional="images",
)
train_depth = Command(
    "train-depth",
    "train a monocular depth head (DPT or linear) on a frozen encoder from RGB-D captures (resumable)",
    TrainDepthConfig,
    "recon.depth:run_train",
)
eval_depth = Command(
    "eval-depth",
    "evaluate a depth head: d1, d2, d3, abs_rel, sq_rel, rmse, rmse_log, log10, silog (table + JSON)",
    EvalDepthConfig,
    "recon.depth:run_eval",
)
depth = Command(
    "depth",
    "metric depth of images: 16-bit PNG (mm), colourised PNG, and with intrinsics a .ply and a Rerun recording",
    DepthCommandConfig,
    "recon.depth:run_depth",
    positional="images",
)
