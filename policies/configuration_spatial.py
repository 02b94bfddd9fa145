"""Configuration of the spatial head (`modeling_spatial.py`); Hydra: `head=spatial`."""

from __future__ import annotations

from dataclasses import dataclass, field

from .configuration_cortexbench import CortexBenchConfig


@dataclass
class SpatialConfig(CortexBenchConfig):
    """The CortexBench head with a small CNN in front: each frame's patch-token grid goes
    through the CNN (Theia's protocol for spatial features) to a `frame_dim` code, and the
    stacked codes of the last `history` frames with the state go through the CortexBench MLP."""

    name: str = field(default="spatial", metadata={"help": "head type"})
    channels: list[int] = field(
        default_factory=lambda: [256, 256, 64], metadata={"help": "conv channels: 1x1 reduce, 3x3 (stride 2), 3x3"}
    )
    frame_dim: int = field(default=256, metadata={"help": "size of each frame's code"})
