"""Options of `pixio-robot distill`: a trained encoder teaches a smaller one (docs/DESIGN.md section 3).

Data, optimizer, schedule and run options are those of `pretrain`; presets live under
`configs/distill/` (`pixio-robot distill distill=vitb16_from_vith16 teacher=... ...`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pixio_robot.errors import PixioError

from .configuration_pixio import DataConfig, OptimConfig, RunConfig, ScheduleConfig, check_batch, check_masking


@dataclass
class StudentConfig:
    encoder: str = field(default="vitb16", metadata={"help": "student size: vitn16, vitt16, vits16, vitb16, ..."})
    image_size: int = field(default=256, metadata={"help": "training resolution (square, multiple of 16)"})
    drop_path: float = field(default=0.0, metadata={"help": "stochastic depth of the student"})
    mask_grid: int = field(default=4, metadata={"help": "masking cell side in patches"})
    mask_ratio: float = field(default=0.5, metadata={"help": "fraction of cells hidden from the student (0: none)"})
    attention: str = field(default="auto", metadata={"help": "auto, fused (SDPA) or math"})
    init: str | None = field(default=None, metadata={"help": "student checkpoint to start from"})

    def check(self) -> None:
        check_masking(self.image_size, self.mask_grid, self.mask_ratio, "student", allow_zero=True)
        if self.attention not in ("auto", "fused", "math"):
            raise PixioError(f"student.attention={self.attention!r}: use auto, fused or math")


@dataclass
class DistillConfig:
    teacher: str = field(default="???", metadata={"help": "teacher encoder: .pth, .safetensors, HF folder"})
    # defaults: preset vitn16_128 (a ViT-N/16 student at 128 px on CPU-sized budgets)
    student: StudentConfig = field(
        default_factory=lambda: StudentConfig(encoder="vitn16", image_size=128, mask_grid=2, mask_ratio=0.5)
    )
    data: DataConfig = field(default_factory=lambda: DataConfig(num_workers=1))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(base_lr=1e-3, lr=1e-3))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(steps=2000, warmup_steps=100))
    run: RunConfig = field(default_factory=lambda: RunConfig(dir="outputs/distill/vitn16_128", checkpoint_every=250))
    batch_size: int = field(default=64, metadata={"help": "images per optimizer step, all ranks together"})
    accum_steps: int = field(default=1, metadata={"help": "gradient accumulation steps per optimizer step"})

    def check(self) -> None:
        self.student.check()
        self.data.check()
        self.schedule.check()
        self.run.check()
        check_batch(self.batch_size, self.accum_steps)
