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
    # Both measured on pick_place from front + wrist (README, "Sharp maps per camera"): shared
    # maps at temperature 1 stayed nearly uniform (a median 81 of 128 patches under a map) and
    # most split their mass between the cameras; per-camera maps that start sharp stay sharp
    # (mostly 1-7 patches) and took success from 80/100 to 92/100.
    per_view: bool = field(
        default=True,
        metadata={"help": "with several cameras: `keypoints` maps per camera, each over its own grid (false: shared)"},
    )
    temperature: float = field(
        default=0.1, metadata={"help": "initial softmax temperature (learned; lower: sharper maps)"}
    )
