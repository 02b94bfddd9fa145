"""Configuration of the CortexBench head (`modeling_cortexbench.py`); Hydra: `head=cortexbench`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CortexBenchConfig:
    """The policy of CortexBench's MetaWorld/MuJoCo protocol (eai-vc), as the Pixio paper
    evaluated it: the global embedding (mean of the class tokens) of the last `history` frames
    fused as FLARE does ([e(t-1) - e(t-2), e(t) - e(t-1), e(t)] for 3 frames), with the
    proprioceptive state, through BatchNorm and an MLP with ReLU whose last layer starts at 1 %
    of its usual scale, trained with MSE (Adam, lr 1e-3, batch 256, 100 epochs)."""

    name: str = field(default="cortexbench", metadata={"help": "head type"})
    history: int = field(default=3, metadata={"help": "frames whose embeddings are fused"})
    fusion: str = field(
        default="flare", metadata={"help": "flare (eai-vc: frame differences + the last frame) or stack (plain)"}
    )
    last_layer_scale: float = field(default=0.01, metadata={"help": "initial scale of the last layer (eai-vc: 0.01)"})
    hidden: list[int] = field(default_factory=lambda: [256, 256, 256], metadata={"help": "MLP hidden sizes"})
    use_state: bool = field(default=True, metadata={"help": "feed the proprioceptive state"})
    normalize_actions: bool = field(
        default=True, metadata={"help": "learn actions standardised by the dataset's statistics (eai-vc: raw)"}
    )
    dropout: float = field(default=0.0, metadata={"help": "dropout after each hidden layer"})
    chunk_size: int = field(default=1, metadata={"help": "actions predicted per step (1: no chunking)"})
    # chunks are a LeRobot-style extension of eai-vc's one-step policy (chunk_size=1 is eai-vc)
    temporal_ensemble_coeff: float | None = field(
        default=None, metadata={"help": "with chunk_size>1: average chunks with weights exp(-coeff*i); null: none"}
    )
    n_action_steps: int = field(default=1, metadata={"help": "with chunk_size>1: actions run per chunk"})
    aux_state: float = field(
        default=0.0,
        metadata={
            "help": "weight of an auxiliary loss: the last hidden layer also predicts the recorded object positions "
            "(from observation.environment_state; collect environment_state=true), in training only (0: off)"
        },
    )
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
