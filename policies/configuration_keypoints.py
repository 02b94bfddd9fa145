"""Configuration of the keypoint head (`modeling_keypoints.py`); Hydra: `head=keypoints`."""

from __future__ import annotations

from dataclasses import dataclass, field

from .configuration_cortexbench import CortexBenchConfig


@dataclass
class KeypointsConfig(CortexBenchConfig):
    """The CortexBench head with a spatial softmax in front (Levine et al. 2016, robomimic's
    image encoder): each frame's patch tokens are mapped to `keypoints` heat maps over the
    grid, each reduced to its expected (x, y) position, and those coordinates - where things
    are, which the global embedding loses - go through the CortexBench fusion and MLP."""

    name: str = field(default="keypoints", metadata={"help": "head type"})
    keypoints: int = field(default=32, metadata={"help": "heat maps per frame (each gives an x, y)"})
    values: int = field(default=0, metadata={"help": "token read-outs pooled under each heat map (0: none)"})
