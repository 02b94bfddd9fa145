"""The training loop shared by `pixio-robot pretrain` and `pixio-robot distill`.

One optimizer step = `accum_steps` micro-batches per rank; gradients are averaged over ranks
by DistributedDataParallel, so `batch_size` is the whole step's batch whatever the number of
ranks. Each step: lr from the schedule, forward under autocast, backward, loss averaged over
ranks and checked (a non-finite loss stops the run before the update, keeping the last good
checkpoint), AdamW step. Rank 0 shows the progress bar, logs scalars to `metrics.csv` and
`metrics.rrd`, writes checkpoints and, at the end, the encoder in the project format.

Run folder (`run.dir`): config.json, metrics.csv, metrics.rrd, checkpoints/step-*.pt,
encoder.safetensors.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from pixio_robot.atomic import write_json
from pixio_robot.checkpoints import load_encoder, save_encoder
from pixio_robot.config import to_dict
from pixio_robot.devices import pick_dtype
from pixio_robot.encoder import PixioViT, create_encoder
from pixio_robot.errors import PixioError
from pixio_robot.viz import ScalarLog, rerun_recording

from . import distributed
from .checkpointing import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    remove_stale_temporaries,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .configuration_distill import DistillConfig
from .configuration_pixio import PretrainConfig, check_batch
from .curation import Curation
from .data import (
    BatchPlan,
    IndexedBatches,
    ShardBatches,
    Sources,
    check_readable,
    find_sources,
    make_loader,
    to_model_input,
)
from .modeling_distill import DistillModel, teacher_tokens
from .modeling_pixio import PixioPretrainModel, set_attention
from .optim import lr_at, make_optimizer, set_lr

# Options that change what a step computes: a resumed run must keep them.
_FIXED_ON_RESUME = (
    "model",
    "student",
    "teacher",
    "batch_size",
    "run.seed",
    "data.sources",
    "data.cameras",
    "data.frame_stride",
    "data.crop_scale",
    "data.curation",
    "data.min_color_entropy",
    "data.min_image_side",
)


# ---- what is trained ----------------------------------------------------------------------


@dataclass
class Objective:
    """A trainable module, its loss on a batch, and the encoder inside it."""

    kind: str  # "pretrain" or "distill"
    model: nn.Module
    image_size: int
    num_cells: int
    attention: str
    teacher: PixioViT | None = None
    extra_logs: tuple[str, ...] = field(default_factory=tuple)

    @property
    def encoder(self) -> PixioViT:
        return self.model.encoder

    def loss(self, model: nn.Module, images: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, dict]:
        if self.teacher is None:
            return model(images, noise).loss, {}
        out = model(images, noise, teacher_tokens(self.teacher, images))
        return out.loss, {"loss_cls": out.loss_cls.detach(), "loss_patch": out.loss_patch.detach()}


def pretrain_objective(cfg: PretrainConfig, device: torch.device) -> Objective:
    encoder = None
    if cfg.model.init:
        # size= checks the checkpoint against model.encoder; the stochastic depth is the run's
        encoder = load_encoder(cfg.model.init, size=cfg.model.encoder, drop_path_rate=cfg.model.drop_path)
        if encoder.n_cls_tokens != cfg.model.n_cls_tokens:
            raise PixioError(
                f"model.init has {encoder.n_cls_tokens} class tokens but model.n_cls_tokens={cfg.model.n_cls_tokens}"
            )
    model = PixioPretrainModel(cfg.model, encoder)
    return Objective("pretrain", model, cfg.model.image_size, model.num_cells, cfg.model.attention)


def distill_objective(cfg: DistillConfig, device: torch.device) -> Objective:
    s = cfg.student
    teacher = load_encoder(cfg.teacher).to(device).eval().requires_grad_(False)
    if s.init:
        student = load_encoder(s.init, size=s.encoder, drop_path_rate=s.drop_path)
        if student.n_cls_tokens != teacher.n_cls_tokens:
            raise PixioError(
                f"student.init has {student.n_cls_tokens} class tokens, the teacher {teacher.n_cls_tokens}"
            )
    else:
        student = create_encoder(
            s.encoder, img_size=s.image_size, n_cls_tokens=teacher.n_cls_tokens, drop_path_rate=s.drop_path
        )
    model = DistillModel(student, teacher.embed_dim, s.image_size, s.mask_grid, s.mask_ratio)
    return Objective("distill", model, s.image_size, model.num_cells, s.attention, teacher, ("loss_cls", "loss_patch"))


# ---- the loop -----------------------------------------------------------------------------


def run_pretrain(cfg: PretrainConfig) -> int:
    return train(cfg, pretrain_objective)


def run_distill(cfg: DistillConfig) -> int:
    return train(cfg, distill_objective)


def train(cfg, make_objective) -> int:
    cfg.check()
    env = distributed.setup(cfg.run.device)
    try:
        return _train(cfg, make_objective, env)
    finally:
        distributed.teardown()


def _train(cfg, make_objective, env: distributed.DistEnv) -> int:
    run_dir = Path(cfg.run.dir)
    micro = check_batch(cfg.batch_size, cfg.accum_steps, env.world_size)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    if cfg.run.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    dtype = pick_dtype(cfg.run.dtype)
    device = env.device

    ckpt = _checkpoint_to_resume(cfg, run_dir)
    sources = find_sources(cfg.data.sources, cfg.data.cameras, cfg.data.frame_stride)
    check_readable(sources)
    curation = (
        Curation.load(cfg.data.curation, cfg.data.min_color_entropy, cfg.data.min_image_side)
        if cfg.data.curation
        else None
    )

    torch.manual_seed(cfg.run.seed)  # the same initial weights on every rank
    objective = make_objective(cfg, device)
    model = objective.model.to(device)
    attention = set_attention(model, objective.attention, device, dtype)
    if objective.teacher is not None:
        set_attention(objective.teacher, objective.attention, device, dtype)
    optimizer = make_optimizer(model, cfg.optim, device)
    peak_lr = cfg.optim.peak_lr(cfg.batch_size)
    step = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step = int(ckpt["step"])
        rngs = ckpt["rng"]
        if len(rngs) == env.world_size:
            set_rng_state(rngs[env.rank])
    else:
        torch.manual_seed(cfg.run.seed + env.rank)  # stochastic depth differs per rank
    if cfg.run.compile:
        for blk in _blocks(model):
            blk.compile()
    ddp = model
    if env.distributed:
        # The class token's gradient is a slice of the gradient of the concatenated class and
        # register tokens (timm's layout); DDP copies it into its bucket and warns once per rank.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    plan = BatchPlan(
        micro,
        cfg.accum_steps,
        env.rank,
        env.world_size,
        cfg.run.seed,
        objective.image_size,
        tuple(cfg.data.crop_scale),
        objective.num_cells,
    )
    position = json.loads(ckpt["data"]) if ckpt is not None else {}
    dataset = _dataset(sources, plan, cfg.data.num_workers, step, position, curation, env)
    loader = make_loader(dataset, cfg.data.num_workers, pin_memory=device.type == "cuda")

    if env.is_main:
        remove_stale_temporaries(run_dir)
        remove_stale_temporaries(run_dir / "checkpoints")
        write_json(run_dir / "config.json", to_dict(cfg) | {"kind": objective.kind})
        n_params = sum(p.numel() for p in model.parameters())
        print(
            f"{objective.kind}: {n_params / 1e6:.1f}M parameters, {sources.describe()}, batch {cfg.batch_size} "
            f"({env.world_size} ranks x {cfg.accum_steps} accumulation x {micro}), peak lr {peak_lr:.3g}, "
            f"{device.type} {dtype}, {attention} attention" + (f", resuming at step {step}" if ckpt else "")
        )

    with _logs(run_dir, step, env.is_main) as log:
        state = _Loop(cfg, env, objective, model, ddp, optimizer, loader, dtype, peak_lr, plan, position, log)
        step = state.run(step)
    if env.is_main and step >= cfg.schedule.steps:
        out = save_encoder(
            objective.encoder.cpu(),
            run_dir / cfg.run.export,
            metadata={"trained_by": f"pixio-robot {objective.kind}", "step": str(step)},
        )
        print(f"wrote {out} (the encoder alone, project format)")
    elif env.is_main:
        print(f"stopped at step {step} of {cfg.schedule.steps}: continue with the same options and run.resume=true")
    return 0


def _blocks(model: nn.Module) -> list[nn.Module]:
    from timm.models.vision_transformer import Block

    return [m for m in model.modules() if isinstance(m, Block)]


def _checkpoint_to_resume(cfg, run_dir: Path) -> dict | None:
    if not cfg.run.resume:
        if list_checkpoints(run_dir):
            raise PixioError(
                f"run.dir={run_dir} already holds checkpoints: pass run.resume=true to continue that run, or choose "
                "another run.dir"
            )
        return None
    path = latest_checkpoint(run_dir)
    if path is None:
        raise PixioError(
            f"run.resume=true but {run_dir}/checkpoints holds no checkpoint: drop run.resume=true to start"
        )
    ckpt = load_checkpoint(path)
    saved, now = _flat(json.loads(ckpt["config"])), _flat(to_dict(cfg))
    changed = [k for k in now if saved.get(k) != now[k] and k.startswith(_FIXED_ON_RESUME)]
    if changed:
        k = changed[0]
        raise PixioError(
            f"run.resume=true with {k}={now[k]!r}, but the run was started with {saved.get(k)!r}: keep the run's "
            "options (see config.json) or start a new run.dir"
        )
    return ckpt


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out |= _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def _dataset(sources: Sources, plan: BatchPlan, num_workers: int, step: int, position: dict, curation, env):
    micro_done = step * plan.accum_steps
    if sources.index is not None:
        return IndexedBatches(sources.index, plan, start_micro=micro_done, curation=curation)
    workers = max(1, num_workers)
    states = {}
    if position:
        if position.get("consumers_per_rank") != workers or position.get("world_size") != env.world_size:
            raise PixioError(
                f"this run streamed its shards with {position.get('world_size')} ranks x "
                f"{position.get('consumers_per_rank')} workers: resume with the same torchrun --nproc_per_node "
                "and data.num_workers (the position in each worker's shards is kept)"
            )
        states = {int(c): s for c, s in position["consumers"].items()}
    return ShardBatches(sources.shards, plan, workers, states, offset=micro_done % workers, curation=curation)


@contextlib.contextmanager
def _logs(run_dir: Path, step: int, is_main: bool):
    """ScalarLog on rank 0 (CSV + Rerun recording; a resumed run replays its earlier rows
    into the new recording so the .rrd covers the whole run), nothing elsewhere."""
    if not is_main:
        yield None
        return
    csv_path = run_dir / "metrics.csv"
    with rerun_recording(run_dir / "metrics.rrd", application_id="pixio_robot_pretrain") as rec:
        log = ScalarLog(csv_path, rec, resume_step=step if step else None)
        if step and csv_path.exists():
            _replay(csv_path, rec)
        try:
            yield log
        finally:
            log.close()


def _replay(csv_path: Path, rec) -> None:
    import rerun as rr

    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            rec.set_time("step", sequence=int(float(row.pop("step"))))
            for k, v in row.items():
                with contextlib.suppress(TypeError, ValueError):
                    if math.isfinite(float(v)):
                        rec.log(f"metrics/{k}", rr.Scalars([float(v)]))


class _Loop:
    def __init__(self, cfg, env, objective, model, ddp, optimizer, loader, dtype, peak_lr, plan, position, log):
        self.cfg, self.env, self.objective = cfg, env, objective
        self.model, self.ddp, self.optimizer, self.loader = model, ddp, optimizer, loader
        self.dtype, self.peak_lr, self.plan, self.log = dtype, peak_lr, plan, log
        self.device = env.device
        self.consumers: dict[int, dict] = {int(c): s for c, s in position.get("consumers", {}).items()}
        self.skipped_before = int(position.get("skipped", 0))
        self.skipped: dict[int, int] = {}
        self.skipped_shown = 0
        self.last_good: Path | None = None

    def run(self, step: int) -> int:
        cfg, env = self.cfg, self.env
        total = cfg.schedule.steps
        stop = total if cfg.run.stop_after is None else min(total, step + cfg.run.stop_after)
        self.last_good = latest_checkpoint(cfg.run.dir) if step else None
        bar = tqdm(
            total=total,
            initial=step,
            desc=self.objective.kind,
            unit="step",
            dynamic_ncols=True,
            disable=not (env.is_main and cfg.run.progress),
        )
        batches = iter(self.loader)
        self.model.train()
        ips = None
        try:
            while step < stop:
                t0 = time.perf_counter()
                lr = lr_at(step, self.peak_lr, cfg.schedule)
                set_lr(self.optimizer, lr)
                loss, extra = self.accumulate(batches)
                self.check_finite(loss, step)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                step += 1
                rate = cfg.batch_size / (time.perf_counter() - t0)
                ips = rate if ips is None else 0.9 * ips + 0.1 * rate
                if step % cfg.run.log_every == 0 or step == stop:
                    self.record(step, loss, lr, rate, extra)
                bar.update(1)
                shown = {"loss": f"{loss:.4f}", "img/s": f"{ips:.1f}", "lr": f"{lr:.2e}"}
                bar.set_postfix(shown | ({"skipped": self.skipped_shown} if self.skipped_shown else {}), refresh=False)
                if step % cfg.run.checkpoint_every == 0 or step == stop:
                    self.checkpoint(step, loss)
        finally:
            bar.close()
        return step

    def accumulate(self, batches) -> tuple[float, dict]:
        """Forward and backward over this step's micro-batches; the loss averaged over them
        and over ranks (one synchronisation per step)."""
        accum = self.cfg.accum_steps
        total = torch.zeros(1 + len(self.objective.extra_logs), device=self.device)
        for j in range(accum):
            batch = self.next_batch(batches)
            x = to_model_input(batch["images"], self.device)
            noise = batch["noise"].to(self.device, non_blocking=True)
            sync = contextlib.nullcontext() if j == accum - 1 or not self.env.distributed else self.ddp.no_sync()
            with sync:
                with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                    loss, logs = self.objective.loss(self.ddp, x, noise)
                (loss / accum).backward()
            total += torch.stack([loss.detach().float(), *(logs[k].float() for k in self.objective.extra_logs)])
        total = distributed.all_reduce_mean(total / accum, self.env).tolist()
        return total[0], dict(zip(self.objective.extra_logs, total[1:], strict=True))

    def next_batch(self, batches) -> dict:
        try:
            batch = next(batches)
        except Exception as e:
            text = str(e)
            if "PixioError" in text:  # raised in a loader worker: keep its one line
                raise PixioError(text.strip().splitlines()[-1].removeprefix("pixio_robot.errors.PixioError: ")) from e
            raise
        w = batch["worker"]
        if "epoch" in batch["state"]:  # shard streams: where this consumer is
            self.consumers[w] = batch["state"]
        self.skipped[w] = batch["skipped"]
        return batch

    def check_finite(self, loss: float, step: int) -> None:
        if math.isfinite(loss):
            return
        where = (
            f"the last good checkpoint {self.last_good} is kept" if self.last_good else "no checkpoint was written yet"
        )
        raise PixioError(
            f"loss is {loss} at step {step + 1}: training stopped before the update and {where}; lower optim.base_lr "
            "or use run.dtype=float32, then run.resume=true"
        )

    def record(self, step: int, loss: float, lr: float, rate: float, extra: dict) -> None:
        self.skipped_shown = skipped = self.skipped_total()
        if self.log is not None:
            self.log.log(step, loss=loss, lr=lr, images_per_s=rate, skipped_images=skipped, **extra)
        if self.env.is_main and not self.cfg.run.progress:
            print(f"step {step}/{self.cfg.schedule.steps} loss {loss:.4f} lr {lr:.3g} {rate:.1f} img/s", flush=True)

    def skipped_total(self) -> int:
        counts = distributed.gather_objects(sum(self.skipped.values()), self.env)
        return self.skipped_before + sum(counts)

    def checkpoint(self, step: int, loss: float) -> None:
        # Every rank takes part (positions and RNG states are gathered); rank 0 writes.
        consumers = distributed.gather_objects(self.consumers, self.env)
        rngs = distributed.gather_objects(rng_state(), self.env)
        skipped = self.skipped_total()
        if not self.env.is_main:
            return
        position = {"micro": step * self.cfg.accum_steps, "skipped": skipped}
        if isinstance(self.loader.dataset, ShardBatches):
            position |= {
                "consumers": {str(c): s for part in consumers for c, s in part.items()},
                "consumers_per_rank": self.loader.dataset.num_workers,
                "world_size": self.env.world_size,
            }
        payload = {
            "kind": self.objective.kind,
            "config": json.dumps(to_dict(self.cfg)),
            "encoder": json.dumps(self.objective.encoder.config),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {
                "peak_lr": self.peak_lr,
                "warmup_steps": self.cfg.schedule.warmup_steps,
                "steps": self.cfg.schedule.steps,
                "min_lr": self.cfg.schedule.min_lr,
                "lr": lr_at(step, self.peak_lr, self.cfg.schedule),
            },
            "data": json.dumps(position),
            "rng": rngs,
            "loss": loss,
        }
        self.last_good = save_checkpoint(self.cfg.run.dir, step, payload, self.cfg.run.keep_checkpoints)
