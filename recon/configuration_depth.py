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
    `min_depth`. Widths are smaller than the official ViT-H head's (features 256, reassemble
    [256, 512, 1024, 1024]) to train on 2 cores."""

    head: str = field(default="dpt", metadata={"help": "dpt (4 taps, multi-scale fusion) or linear (last block)"})
    features: int = field(default=64, metadata={"help": "DPT fusion width (official: 256)"})
    channels: list[int] = field(
        default_factory=lambda: [32, 64, 128, 128], metadata={"help": "DPT reassemble widths of the 4 taps"}
    )
    max_depth: float = field(default=3.0, metadata={"help": "largest depth (m): the output scale"})
    min_depth: float = field(default=0.01, metadata={"help": "smallest depth (m): output floor, loss mask"})

    def check(self) -> DepthHeadConfig:
        if self.head not in ("dpt", "linear"):
            raise PixioError(f"depth.head={self.head!r}: use dpt or linear")
        if len(self.channels) != 4 or min(self.channels) < 1 or self.features < 1:
            raise PixioError("depth.channels needs 4 positive widths and depth.features a positive width")
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
        return cls(**d).check()
