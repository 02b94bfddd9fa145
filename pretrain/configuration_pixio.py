"""Options of `pixio-robot pretrain` (and the parts `distill` shares), as dataclasses.

The defaults are the official Pixio recipe (docs/DESIGN.md section 3); the presets under
`configs/pretrain/` set sizes and schedules (`pixio-robot pretrain pretrain=vith16 ...`).
Kept free of torch so that `--help` answers at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pixio_robot.errors import PixioError


@dataclass
class ModelConfig:
    encoder: str = field(
        default="vitb16", metadata={"help": "encoder size: vitn16, vitt16, vits16, vitb16, ... vit5b16"}
    )
    image_size: int = field(default=256, metadata={"help": "training resolution (square, multiple of 16)"})
    n_cls_tokens: int = field(default=8, metadata={"help": "class tokens (Pixio 8, MAE 1)"})
    drop_path: float = field(default=0.0, metadata={"help": "stochastic depth of the encoder (official ViT-H: 0.4)"})
    decoder_dim: int = field(default=512, metadata={"help": "decoder width"})
    decoder_depth: int = field(default=32, metadata={"help": "decoder blocks (Pixio 32, MAE 8)"})
    decoder_heads: int = field(default=16, metadata={"help": "decoder attention heads"})
    mask_grid: int = field(default=4, metadata={"help": "masking cell side in patches (Pixio 4, MAE 1)"})
    mask_ratio: float = field(default=0.75, metadata={"help": "fraction of cells masked, in (0, 1)"})
    norm_pix_loss: bool = field(default=True, metadata={"help": "normalise each target patch (mean/var)"})
    attention: str = field(default="auto", metadata={"help": "auto, fused (SDPA) or math; auto = math on CPU+bf16"})
    grad_checkpointing: bool = field(
        default=False, metadata={"help": "recompute each block's activations in the backward pass (less memory)"}
    )
    init: str | None = field(default=None, metadata={"help": "encoder checkpoint to start from (any layout)"})

    def check(self) -> None:
        check_masking(self.image_size, self.mask_grid, self.mask_ratio, "model")
        if self.attention not in ("auto", "fused", "math"):
            raise PixioError(f"model.attention={self.attention!r}: use auto, fused or math")
        if self.decoder_dim % self.decoder_heads:
            raise PixioError(
                f"model.decoder_dim={self.decoder_dim} is not divisible by decoder_heads={self.decoder_heads}"
            )


@dataclass
class DataConfig:
    sources: list[str] = field(
        default_factory=list,
        metadata={
            "help": "image folders/files, WebDataset shards (.tar, {000..099} ranges, URLs), LeRobot dataset roots"
        },
    )
    cameras: list[str] = field(default_factory=list, metadata={"help": "LeRobot camera keys to use (empty: all RGB)"})
    frame_stride: int = field(default=1, metadata={"help": "use every n-th frame of LeRobot datasets"})
    crop_scale: list[float] = field(
        default_factory=lambda: [0.2, 1.0], metadata={"help": "RandomResizedCrop area range"}
    )
    num_workers: int = field(default=2, metadata={"help": "data loading processes per rank (0: in the trainer)"})
    curation: str | None = field(default=None, metadata={"help": "losses JSON from `pixio-robot curate`"})
    min_color_entropy: float | None = field(
        default=None, metadata={"help": "with curation: drop images below this colour entropy (bits)"}
    )
    min_image_side: int | None = field(
        default=None, metadata={"help": "with curation: drop images whose shorter side is below this (pixels)"}
    )

    def check(self) -> None:
        lo, hi = (list(self.crop_scale) + [None, None])[:2]
        if len(self.crop_scale) != 2 or not (0 < lo <= hi <= 1):
            raise PixioError(f"data.crop_scale={list(self.crop_scale)} must be [lo, hi] with 0 < lo <= hi <= 1")
        if self.frame_stride < 1:
            raise PixioError(f"data.frame_stride={self.frame_stride} must be at least 1")
        if self.num_workers < 0:
            raise PixioError(f"data.num_workers={self.num_workers} must be 0 or more")
        if (self.min_color_entropy is not None or self.min_image_side is not None) and self.curation is None:
            raise PixioError(
                "data.min_color_entropy and data.min_image_side need data.curation=FILE (made by `pixio-robot curate`)"
            )


@dataclass
class OptimConfig:
    base_lr: float = field(default=1.5e-4, metadata={"help": "lr = base_lr x batch_size / 256"})
    lr: float | None = field(default=None, metadata={"help": "absolute peak lr (overrides base_lr)"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (none on biases and norms)"})
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95], metadata={"help": "AdamW betas"})
    fused: bool = field(default=True, metadata={"help": "use the fused AdamW kernel"})

    def peak_lr(self, batch_size: int) -> float:
        return self.lr if self.lr is not None else self.base_lr * batch_size / 256


@dataclass
class ScheduleConfig:
    steps: int = field(default=100_000, metadata={"help": "optimizer steps in the whole run"})
    warmup_steps: int = field(default=10_000, metadata={"help": "linear warm-up steps, then cosine to min_lr"})
    min_lr: float = field(default=0.0, metadata={"help": "lr at the end of the cosine"})

    def check(self) -> None:
        if self.steps < 1 or not 0 <= self.warmup_steps <= self.steps:
            raise PixioError(
                f"schedule.steps={self.steps} and warmup_steps={self.warmup_steps}: need steps >= 1 and "
                "0 <= warmup_steps <= steps"
            )


@dataclass
class RunConfig:
    dir: str = field(default="outputs/pretrain", metadata={"help": "run folder: config, checkpoints, logs, encoder"})
    resume: bool = field(default=False, metadata={"help": "continue from the latest checkpoint in run.dir"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation, crops and masks"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda (under torchrun: cuda:LOCAL_RANK)"})
    dtype: str = field(
        default="auto", metadata={"help": "autocast dtype: auto (bf16 where native, else float32), bfloat16, float32"}
    )
    compile: bool = field(default=False, metadata={"help": "torch.compile the transformer blocks"})
    parallel: str = field(
        default="ddp",
        metadata={
            "help": "across ranks: ddp (whole weights on every rank) or fsdp (FSDP2: weights, gradients and AdamW "
            "moments sharded per transformer block; sharded checkpoints)"
        },
    )
    deterministic: bool = field(default=False, metadata={"help": "deterministic kernels (exact resume on CPU)"})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads per rank (default: torch's)"})
    checkpoint_every: int = field(default=1000, metadata={"help": "steps between checkpoints"})
    keep_checkpoints: int = field(default=3, metadata={"help": "how many recent checkpoints to keep"})
    log_every: int = field(default=10, metadata={"help": "steps between logged scalars"})
    stop_after: int | None = field(default=None, metadata={"help": "stop this session after N steps (resumable)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    export: str = field(default="encoder.safetensors", metadata={"help": "encoder file written in run.dir at the end"})

    def check(self) -> None:
        if self.checkpoint_every < 1 or self.keep_checkpoints < 1 or self.log_every < 1:
            raise PixioError("run.checkpoint_every, run.keep_checkpoints and run.log_every must be at least 1")
        if self.parallel not in ("ddp", "fsdp"):
            raise PixioError(f"run.parallel={self.parallel!r}: choose ddp or fsdp")
        if self.dtype not in ("auto", "bfloat16", "bf16", "float32", "fp32"):
            raise PixioError(f"run.dtype={self.dtype!r}: training runs in auto, bfloat16 (autocast) or float32")


# The command's defaults are the CPU-sized Pixio (preset vitn16_128, the bundled sim_vitn16's
# recipe): ViT-N/16 at 128 px, 2x2-patch cells, a 128-d x 8-block decoder, 2000 steps of 64
# images. The parts' own defaults (ModelConfig() ...) stay the official Pixio recipe's.
@dataclass
class PretrainConfig:
    model: ModelConfig = field(
        default_factory=lambda: ModelConfig(
            encoder="vitn16", image_size=128, decoder_dim=128, decoder_depth=8, decoder_heads=4, mask_grid=2
        )
    )
    data: DataConfig = field(default_factory=lambda: DataConfig(num_workers=1))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(base_lr=2e-3))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(steps=2000, warmup_steps=100))
    run: RunConfig = field(default_factory=lambda: RunConfig(dir="outputs/pretrain/vitn16_128", checkpoint_every=250))
    batch_size: int = field(default=64, metadata={"help": "images per optimizer step, all ranks together"})
    accum_steps: int = field(default=1, metadata={"help": "gradient accumulation steps per optimizer step"})

    def check(self) -> None:
        self.model.check()
        self.data.check()
        self.schedule.check()
        self.run.check()
        check_batch(self.batch_size, self.accum_steps)


def check_batch(batch_size: int, accum_steps: int, world_size: int = 1) -> int:
    """The per-rank micro-batch, or a clear error when the batch does not split evenly."""
    if batch_size < 1 or accum_steps < 1:
        raise PixioError(f"batch_size={batch_size} and accum_steps={accum_steps} must be at least 1")
    parts = accum_steps * world_size
    if batch_size % parts:
        raise PixioError(
            f"batch_size={batch_size} does not split into {accum_steps} accumulation steps x {world_size} ranks: "
            f"use a multiple of {parts}"
        )
    return batch_size // parts


def check_masking(
    image_size: int, mask_grid: int, mask_ratio: float, prefix: str, patch_size: int = 16, allow_zero: bool = False
) -> None:
    """Grid masking needs whole cells: the cell side must divide the patch grid, and at least
    one cell must stay visible. Distillation may also mask nothing (ratio 0)."""
    if image_size < patch_size or image_size % patch_size:
        raise PixioError(
            f"{prefix}.image_size={image_size} is not a multiple of the patch size {patch_size}: use e.g. 128"
        )
    grid = image_size // patch_size
    if mask_grid < 1 or grid % mask_grid:
        raise PixioError(
            f"{prefix}.mask_grid={mask_grid} does not divide the {grid}x{grid} patch grid of {image_size}px "
            f"images: choose a divisor of {grid} (e.g. {_divisor_near(grid, mask_grid)})"
        )
    if not (0.0 <= mask_ratio < 1.0 if allow_zero else 0.0 < mask_ratio < 1.0):
        interval = "in [0, 1)" if allow_zero else "strictly between 0 and 1 (Pixio: 0.75)"
        raise PixioError(f"{prefix}.mask_ratio={mask_ratio} must lie {interval}")
    cells = (grid // mask_grid) ** 2
    if int(cells * (1 - mask_ratio)) < 1:
        raise PixioError(
            f"{prefix}.mask_ratio={mask_ratio} leaves none of the {cells} cells visible: lower the ratio or "
            "the mask_grid"
        )


def _divisor_near(n: int, k: int) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - k), -d))
