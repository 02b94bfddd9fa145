"""The pretrain package's subcommands (registered under the `pixio_robot.commands` entry points).

Kept free of torch so that `pixio-robot --help` and option errors answer at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pixio_robot.cli import Command

from .configuration_distill import DistillConfig
from .configuration_pixio import PretrainConfig


@dataclass
class CurateConfig:
    sources: list[str] = field(default_factory=list, metadata={"help": "the training data (as data.sources)"})
    checkpoint: str = field(default="???", metadata={"help": "trained pretrain run folder or step-*.pt file"})
    out: str = field(default="curation.json", metadata={"help": "output file (JSON)"})
    cameras: list[str] = field(default_factory=list, metadata={"help": "LeRobot camera keys (empty: all RGB)"})
    frame_stride: int = field(default=1, metadata={"help": "every n-th frame of LeRobot datasets"})
    repeats: int = field(default=1, metadata={"help": "masks per image (the loss is their mean)"})
    batch_size: int = field(default=32, metadata={"help": "images per forward pass"})
    seed: int = field(default=0, metadata={"help": "seed of the masks"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, ..."})
    dtype: str = field(default="float32", metadata={"help": "float32 or bfloat16 compute"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing output file"})


@dataclass
class ReconstructConfig:
    images: list[str] = field(default_factory=list, metadata={"help": "image files or folders (first n are shown)"})
    checkpoint: str = field(default="???", metadata={"help": "trained pretrain run folder or step-*.pt file"})
    out: str = field(
        default="reconstruction.png", metadata={"help": "PNG grid; a .rrd recording is written next to it"}
    )
    n: int = field(default=8, metadata={"help": "how many images"})
    seed: int = field(default=0, metadata={"help": "seed of the masks"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, ..."})
    overwrite: bool = field(default=False, metadata={"help": "replace existing output files"})


@dataclass
class ExportConfig:
    checkpoint: str = field(default="???", metadata={"help": "run folder (its latest checkpoint) or step-*.pt file"})
    out: str = field(default="???", metadata={"help": "output .safetensors file (project format)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing output file"})


pretrain = Command(
    "pretrain",
    "pre-train a Pixio encoder by masked pixel reconstruction (resumable; torchrun for many GPUs)",
    PretrainConfig,
    "pretrain.train:run_pretrain",
)
distill = Command(
    "distill",
    "distil a trained encoder into a smaller one (same loop as pretrain)",
    DistillConfig,
    "pretrain.train:run_distill",
)
curate = Command(
    "curate",
    "score a dataset's images by reconstruction loss for loss-based curation (data.curation=...)",
    CurateConfig,
    "pretrain.curate:run_curate",
    positional="sources",
)
reconstruct = Command(
    "pretrain-view",
    "show input, mask, prediction and target of a pretrain checkpoint (PNG grid + Rerun recording)",
    ReconstructConfig,
    "pretrain.view:run_view",
    positional="images",
)
export = Command(
    "pretrain-export",
    "write the encoder of a pretrain/distill checkpoint in the project format",
    ExportConfig,
    "pretrain.view:run_export",
    positional="checkpoint",
)
