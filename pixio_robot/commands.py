"""The core's subcommands: options (dataclass schemas) and where each is implemented.

Kept free of torch so that `pixio-robot --help` and option errors answer at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .cli import Command


@dataclass
class FeaturesConfig:
    images: list[str] = field(default_factory=list, metadata={"help": "image files or folders (searched recursively)"})
    checkpoint: str = field(default="???", metadata={"help": "encoder: .pth, .safetensors, HF folder or a size name"})
    out: str = field(default="features.safetensors", metadata={"help": "output file"})
    size: int = field(default=256, metadata={"help": "images are resized to size x size"})
    blocks: list[int] = field(default_factory=lambda: [-1], metadata={"help": "blocks to save (negative from the end)"})
    patches: bool = field(default=True, metadata={"help": "also save patch tokens"})
    batch_size: int = field(default=8, metadata={"help": "images per forward pass"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, ..."})
    dtype: str = field(default="float32", metadata={"help": "float32 or bfloat16 compute"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the encoder (~1 min, ~1.4x faster)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing output file"})


@dataclass
class ConvertConfig:
    source: str = field(default="???", metadata={"help": "checkpoint: .pth, .safetensors or transformers folder"})
    out: str = field(default="???", metadata={"help": "output .safetensors file (project format)"})
    size: str | None = field(default=None, metadata={"help": "expected size (e.g. vitb16); inferred when unset"})
    num_heads: int | None = field(
        default=None, metadata={"help": "attention heads, for a width that is none of the named sizes"}
    )
    overwrite: bool = field(default=False, metadata={"help": "replace an existing output file"})


@dataclass
class InfoConfig:
    source: str = field(default="???", metadata={"help": "checkpoint to describe"})


@dataclass
class ViewConfig:
    file: str = field(default="???", metadata={"help": ".rrd recording, or .ply/.pcd point cloud"})
    web: bool = field(default=False, metadata={"help": "serve the web viewer on localhost instead of a window"})
    port: int = field(default=9876, metadata={"help": "gRPC port of the web viewer's data server"})
    web_port: int = field(default=9090, metadata={"help": "HTTP port of the web viewer"})


features = Command(
    "features",
    "encode images and save global embeddings and patch features (safetensors)",
    FeaturesConfig,
    "pixio_robot.extract:run",
    positional="images",
)
convert = Command(
    "convert",
    "convert any supported checkpoint to the project format",
    ConvertConfig,
    "pixio_robot.convert:convert",
    positional="source",
)
info = Command(
    "info", "show a checkpoint's architecture and hash", InfoConfig, "pixio_robot.convert:info", positional="source"
)
view = Command(
    "view",
    "open a Rerun recording or a point cloud (Rerun viewer, or web on localhost)",
    ViewConfig,
    "pixio_robot.viz:view",
    positional="file",
)
