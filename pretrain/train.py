"""`pixio-robot pretrain` and `pixio-robot distill`: their data, models and step function on
the core's training harness (`pixio_robot.harness`: loop, checkpoints, schedule, loss guard,
scalars).

One optimizer step = `accum_steps` micro-batches per rank; gradients are averaged over ranks
by DistributedDataParallel (`run.parallel=ddp`) or reduce-scattered by FSDP2
(`run.parallel=fsdp`: weights, gradients and optimizer state sharded per transformer block), so
`batch_size` is the whole step's batch whatever the number of ranks. Each step: lr from the
schedule, forward under autocast, backward, loss averaged over ranks and checked (a non-finite
loss stops the run before the update, keeping the last good checkpoint), AdamW step. Rank 0
shows the progress bar, logs scalars to `metrics.csv` and `metrics.rrd`, writes checkpoints
and, at the end, the encoder in the project format.

Run folder (`run.dir`): config.json, metrics.csv, metrics.rrd, checkpoints/step-*.pt (with
step-*.dcp/ shard folders under FSDP), encoder.safetensors.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pixio_robot.atomic import write_json
from pixio_robot.checkpoints import load_encoder, save_encoder
from pixio_robot.config import to_dict
from pixio_robot.devices import pick_dtype
from pixio_robot.encoder import PixioViT, create_encoder
from pixio_robot.errors import PixioError
from pixio_robot.harness import (
    Run,
    WarmupCosine,
    list_checkpoints,
    remove_stale_temporaries,
    resume_checkpoint,
    scalar_log,
)

from . import distributed
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
from .optim import make_optimizer

# What a resumed run may change (how it runs, how long, how fast it learns); everything else
# (model, batch, seed, data) changes what a step computes and must stay.
MAY_CHANGE_ON_RESUME = (
    *("run.dir", "run.resume", "run.device", "run.dtype", "run.compile", "run.deterministic", "run.threads"),
    "run.parallel",  # checked against the checkpoint's layout (whole or sharded) instead
    *("run.checkpoint_every", "run.keep_checkpoints", "run.log_every", "run.stop_after", "run.progress"),
    *("run.export", "optim", "schedule", "accum_steps", "data.num_workers", "kind"),
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
    _set_runtime(cfg)
    dtype, device = pick_dtype(cfg.run.dtype, env.device), env.device
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
    if cfg.run.compile:
        for blk in _blocks(model):
            blk.compile()
    sharded = cfg.run.parallel == "fsdp"
    if sharded:  # before the optimizer: FSDP replaces the parameters with their shards
        distributed.shard(model, _blocks(model), dtype, env)
    torch.manual_seed(cfg.run.seed + env.rank)  # stochastic depth differs per rank (a resume restores it)
    optimizer = make_optimizer(model, cfg.optim, device)
    steps = _Steps(cfg, env, objective, model, dtype, micro, json.loads(ckpt["data"]) if ckpt else {})
    run = Run(
        kind=objective.kind,
        run_dir=run_dir,
        config=to_dict(cfg),
        model=model,
        optimizer=optimizer,
        schedule=WarmupCosine(
            cfg.optim.peak_lr(cfg.batch_size), cfg.schedule.warmup_steps, cfg.schedule.steps, cfg.schedule.min_lr
        ),
        total=cfg.schedule.steps,
        step_fn=steps,
        samples_per_step=cfg.batch_size,
        log_every=cfg.run.log_every,
        save_every=cfg.run.checkpoint_every,
        keep=cfg.run.keep_checkpoints,
        advice="lower optim.base_lr or use run.dtype=float32, then run.resume=true",
        after_step=steps.after_step,
        state=steps.state,
        gather=lambda x: distributed.gather_objects(x, env),
        rank=env.rank,
        world_size=env.world_size,
        is_main=env.is_main,
        progress=cfg.run.progress,
        save_on_interrupt=False,  # a collective write: ranks may not all see the interrupt
        sharded=sharded,
    )
    step = run.resume(ckpt) if ckpt is not None else 0
    steps.wrap(model, env, device)
    steps.loader = make_loader(
        _dataset(sources, steps.plan, cfg.data.num_workers, step, steps.position, curation, env),
        cfg.data.num_workers,
        pin_memory=device.type == "cuda",
    )
    if env.is_main:
        _announce(cfg, run_dir, objective, model, sources, micro, dtype, device, attention, step)
    stop = None if cfg.run.stop_after is None else step + cfg.run.stop_after
    with _logs(run_dir, step, env.is_main) as log:
        step = run.run(step, stop, log)
    return _finish(cfg, run_dir, objective, step, env)


def _set_runtime(cfg) -> None:
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    if cfg.run.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


def _announce(cfg, run_dir, objective, model, sources, micro, dtype, device, attention, step) -> None:
    remove_stale_temporaries(run_dir)
    remove_stale_temporaries(run_dir / "checkpoints")
    write_json(run_dir / "config.json", to_dict(cfg) | {"kind": objective.kind})
    n_params = sum(p.numel() for p in model.parameters())
    world = cfg.batch_size // (cfg.accum_steps * micro)
    print(
        f"{objective.kind}: {n_params / 1e6:.1f}M parameters, {sources.describe()}, batch {cfg.batch_size} "
        f"({world} ranks x {cfg.accum_steps} accumulation x {micro}), peak lr {cfg.optim.peak_lr(cfg.batch_size):.3g}, "
        f"{device.type} {dtype}, {attention} attention"
        + (f", {cfg.run.parallel}" if world > 1 else "")
        + (f", resuming at step {step}" if step else "")
    )


def _finish(cfg, run_dir: Path, objective: Objective, step: int, env) -> int:
    done = step >= cfg.schedule.steps
    encoder = _whole_encoder(objective, env) if done and cfg.run.parallel == "fsdp" else objective.encoder
    if env.is_main and done:
        out = save_encoder(
            encoder.cpu(),
            run_dir / cfg.run.export,
            metadata={"trained_by": f"pixio-robot {objective.kind}", "step": str(step)},
        )
        print(f"wrote {out} (the encoder alone, project format)")
    elif env.is_main:
        print(f"stopped at step {step} of {cfg.schedule.steps}: continue with the same options and run.resume=true")
    return 0


def _whole_encoder(objective: Objective, env) -> PixioViT | None:
    """The encoder with its shards gathered, on rank 0 (collective; None elsewhere)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(objective.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not env.is_main:
        return None
    with torch.device("meta"):  # no second random initialisation of a large model
        encoder = PixioViT(**objective.encoder.config)
    prefix = "encoder."
    encoder.load_state_dict({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}, assign=True)
    return encoder


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
    ckpt = resume_checkpoint(run_dir, to_dict(cfg), MAY_CHANGE_ON_RESUME, "start a new run.dir")
    if ckpt is None:
        raise PixioError(
            f"run.resume=true but {run_dir}/checkpoints holds no checkpoint: drop run.resume=true to start"
        )
    saved = "fsdp" if "sharded" in ckpt else "ddp"
    if saved != cfg.run.parallel:
        raise PixioError(
            f"{ckpt['path']} was written with run.parallel={saved} ({'sharded' if saved == 'fsdp' else 'whole'} "
            f"weights): resume with run.parallel={saved}"
        )
    return ckpt


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
    """The harness's scalar log on rank 0, nothing elsewhere."""
    if not is_main:
        yield None
        return
    with scalar_log(run_dir, step, "pixio_robot_pretrain") as log:
        yield log


class _Steps:
    """Pre-training's step: `accum_steps` micro-batches per rank, forward under autocast,
    backward (DDP or FSDP averages gradients over ranks), the loss averaged over ranks. Keeps where
    each loader worker is in its data, for the checkpoint."""

    def __init__(self, cfg, env, objective: Objective, model: nn.Module, dtype, micro: int, position: dict):
        self.cfg, self.env, self.objective, self.dtype = cfg, env, objective, dtype
        self.device = env.device
        self.wrapped = model  # what the loss is computed through (the DDP wrapper, or the model)
        self.sharded = cfg.run.parallel == "fsdp"
        self.position = position
        self.plan = BatchPlan(
            micro,
            cfg.accum_steps,
            env.rank,
            env.world_size,
            cfg.run.seed,
            objective.image_size,
            tuple(cfg.data.crop_scale),
            objective.num_cells,
        )
        self.consumers: dict[int, dict] = {int(c): s for c, s in position.get("consumers", {}).items()}
        self.skipped_before = int(position.get("skipped", 0))
        self.skipped: dict[int, int] = {}
        self.loader = None
        self._batches = None

    def wrap(self, model: nn.Module, env, device) -> None:
        """Wrap for DDP after the weights are restored (an FSDP model is sharded in place)."""
        if env.distributed and not self.sharded:
            # The class token's gradient is a slice of the gradient of the concatenated class and
            # register tokens (timm's layout); DDP copies it into its bucket and warns once per rank.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            ids = [device.index] if device.type == "cuda" else None
            # gradient_as_bucket_view: the gradients live in DDP's communication buckets instead of
            # beside them (4 bytes per parameter less; benchmarks/checkpointing.py --preset)
            self.wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)

    def __call__(self, step: int) -> tuple[float, dict]:
        if self._batches is None:
            self._batches = iter(self.loader)
        accum = self.cfg.accum_steps
        total = torch.zeros(1 + len(self.objective.extra_logs), device=self.device)
        for j in range(accum):
            batch = self.next_batch()
            x = to_model_input(batch["images"], self.device)
            noise = batch["noise"].to(self.device, non_blocking=True)
            with self._sync(j == accum - 1):
                with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                    loss, logs = self.objective.loss(self.wrapped, x, noise)
                (loss / accum).backward()
            total += torch.stack([loss.detach().float(), *(logs[k].float() for k in self.objective.extra_logs)])
        total = distributed.all_reduce_mean(total / accum, self.env).tolist()
        return total[0], dict(zip(self.objective.extra_logs, total[1:], strict=True))

    def _sync(self, last: bool):
        """Gradients are reduced across ranks on the last micro-batch of a step only."""
        if not self.env.distributed:
            return contextlib.nullcontext()
        if self.sharded:
            self.wrapped.set_requires_gradient_sync(last)
            return contextlib.nullcontext()
        return contextlib.nullcontext() if last else self.wrapped.no_sync()

    def next_batch(self) -> dict:
        try:
            batch = next(self._batches)
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

    def skipped_total(self) -> int:
        counts = distributed.gather_objects(sum(self.skipped.values()), self.env)
        return self.skipped_before + sum(counts)

    def after_step(self, done: int, logging: bool) -> dict:
        return {"skipped_images": self.skipped_total()} if logging else {}

    def state(self) -> dict:
        """The data position (gathered from every rank) and the encoder's architecture."""
        consumers = distributed.gather_objects(self.consumers, self.env)
        skipped = self.skipped_total()
        position = {"skipped": skipped}
        if isinstance(self.loader.dataset, ShardBatches):
            position |= {
                "consumers": {str(c): s for part in consumers for c, s in part.items()},
                "consumers_per_rank": self.loader.dataset.num_workers,
                "world_size": self.env.world_size,
            }
        return {"encoder": json.dumps(self.objective.encoder.config), "data": json.dumps(position)}
