"""Configuration of the action-chunking transformer head (`modeling_chunking.py`); Hydra:
`head=chunking`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ChunkingConfig:
    """ACT's policy (Zhao et al., 2023) over frozen patch tokens: a transformer encoder over
    the patch tokens and a state token, a decoder whose `chunk_size` learned queries read out
    the next `chunk_size` actions, L1 loss; at inference the overlapping chunks are averaged
    with exponential weights (temporal ensembling). ACT's CVAE is left out: with a frozen
    encoder and scripted demonstrations the deterministic version is the usual baseline."""

    name: str = field(default="chunking", metadata={"help": "head type"})
    history: int = field(default=1, metadata={"help": "frames whose patch tokens are attended to"})
    chunk_size: int = field(default=20, metadata={"help": "future actions predicted per step (k)"})
    token_grid: int = field(
        default=0, metadata={"help": "average-pool the patch grid to at most this many per side (0: keep it)"}
    )
    dim: int = field(default=256, metadata={"help": "transformer width"})
    heads: int = field(default=8, metadata={"help": "attention heads"})
    ffn_dim: int = field(default=1024, metadata={"help": "feed-forward width"})
    encoder_layers: int = field(default=4, metadata={"help": "encoder blocks"})
    decoder_layers: int = field(default=1, metadata={"help": "decoder blocks (ACT effectively uses 1)"})
    dropout: float = field(default=0.1, metadata={"help": "dropout in the transformer"})
    use_state: bool = field(default=True, metadata={"help": "add a proprioceptive-state token"})
    temporal_ensemble_coeff: float | None = field(
        default=0.01, metadata={"help": "weights exp(-coeff * i), oldest chunk i=0; null: no ensembling"}
    )
    n_action_steps: int = field(default=1, metadata={"help": "actions run per chunk without ensembling"})
    lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate (ACT)"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay (ACT)"})
