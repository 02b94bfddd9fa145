"""Configuration of the monocular depth heads (`modeling_depth.py`), docs/DESIGN.md section 7."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from pixio_robot.errors import PixioError


@dataclass
class DepthHeadConfig:
    """The official Pixio depth heads on a frozen encoder: `dpt` reads 4 taps (blocks
    depth//4*(i+1)-1), `linear` the last block; each tap is the normed patch tokens with the mean
    normed class token beside them. The output in (0, 1) times `max_depth`, at least
    `min_depth`. `blocks` replaces the tap rule with explicit blocks: for encoders whose depth is
    not a multiple of 4 the rule leaves the last blocks out (ViT-N/16, 6 blocks: taps 0-3).
    Widths are smaller than the official ViT-H head's (features 256, reassemble
    [256, 512, 1024, 1024]) to train on 2 cores."""

    head: str = field(default="dpt", metadata={"help": "dpt (4 taps, multi-scale fusion) or linear (last block)"})
    features: int = field(default=64, metadata={"help": "DPT fusion width (official: 256)"})
    channels: list[int] = field(
        default_factory=lambda: [32, 64, 128, 128], metadata={"help": "DPT reassemble widths of the 4 taps"}
    )
    blocks: list[int] | None = field(
        default=None,
        metadata={
            "help": "the blocks to tap (4 for dpt, 1 for linear; negative counts from the end); "
            "null: the official rule, depth//4*(i+1)-1 for dpt, the last block for linear"
        },
    )
    max_depth: float = field(default=3.0, metadata={"help": "largest depth (m): the output scale"})
    min_depth: float = field(default=0.01, metadata={"help": "smallest depth (m): output floor, loss mask"})

    def check(self) -> DepthHeadConfig:
        if self.head not in ("dpt", "linear"):
            raise PixioError(f"depth.head={self.head!r}: use dpt or linear")
        if len(self.channels) != 4 or min(self.channels) < 1 or self.features < 1:
            raise PixioError("depth.channels needs 4 positive widths and depth.features a positive width")
        if self.blocks is not None and len(self.blocks) != self.taps:
            raise PixioError(
                f"depth.blocks={list(self.blocks)}: depth.head={self.head} taps {self.taps} block(s); "
                f"give {self.taps} or leave depth.blocks=null for the official rule"
            )
        if not 0 < self.min_depth < self.max_depth:
            raise PixioError(f"depth.min_depth={self.min_depth}, max_depth={self.max_depth}: need 0 < min < max")
        return self

    @property
    def taps(self) -> int:
        return 4 if self.head == "dpt" else 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DepthHeadConfig:
        return cls(**d).check()  # heads saved before `blocks` existed load with the official rule
