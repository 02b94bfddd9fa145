"""Configuration of the spatial head (`modeling_spatial.py`); Hydra: `head=spatial`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SpatialConfig:
    """A small CNN over the patch-token grid of each frame (Theia's protocol for spatial
    features), then the CortexBench MLP over the stacked frame codes and the state."""

    name: str = field(default="spatial", metadata={"help": "head type"})
    history: int = field(default=3, metadata={"help": "frames whose codes are stacked"})
    channels: list[int] = field(
        default_factory=lambda: [256, 256, 64], metadata={"help": "conv channels: 1x1 reduce, 3x3 (stride 2), 3x3"}
    )
    frame_dim: int = field(default=256, metadata={"help": "size of each frame's code"})
    hidden: list[int] = field(default_factory=lambda: [256, 256, 256], metadata={"help": "MLP hidden sizes"})
    use_state: bool = field(default=True, metadata={"help": "feed the proprioceptive state"})
    dropout: float = field(default=0.0, metadata={"help": "dropout after each hidden layer"})
    chunk_size: int = field(default=1, metadata={"help": "actions predicted per step (1: no chunking)"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
