"""`pixio-robot train-recon`: train the head on cached frozen-encoder tokens.

    pixio-robot train-recon data=[captures/train] encoder=encoder.safetensors out=runs/recon

The run folder holds
- `model.safetensors`: the head (config, encoder record, image size in its header), what
  `eval-recon` and `recon` read;
- `checkpoints/step-*.pt`: the harness's resumable state (`pixio_robot.harness`); the same
  command again continues the run;
- `encoder.safetensors` for a random-initialised encoder, `config.json`, `metrics.csv`,
  `metrics.rrd`.

The training loop, checkpoints, schedule and loss guard are the harness's: a loss that turns
non-finite, or larger than `explode_factor` times its running mean for `explode_patience`
steps in a row, stops the run with an error; those steps never reach the weights (they are
skipped), and the last checkpoint on disk is the last good one.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from pixio_robot.atomic import run_folder, write_json
from pixio_robot.bundled import resolve_weights
from pixio_robot.config import to_dict
from pixio_robot.devices import pick_device, torch_threads
from pixio_robot.errors import PixioError
from pixio_robot.harness import (
    LossGuard,
    Run,
    WarmupCosine,
    list_checkpoints,
    param_groups,
    resume_checkpoint,
)

from .backbone import prepare_encoder
from .commands import TrainReconConfig
from .configuration_recon import SAVED_BEFORE
from .data import load_scenes, size_pair
from .losses import ReconLoss
from .modeling_recon import ReconModel
from .sampling import ViewSetSampler, collate, fixed_view_sets
from .tokens import TokenCache, default_cache_dir

MODEL = "model.safetensors"
# Options that may change when a run is resumed (lr and the guard's: to recover from a loss
# explosion); everything else must match the saved run.
RESUMABLE_CHANGES = {
    *("steps", "save_every", "log_every", "progress", "device", "threads", "cache_dir", "out"),
    *("lr", "grad_clip", "explode_factor", "explode_patience"),
}
NO_DECAY = ("reference", "scale_token")  # learned tokens, like timm's cls_token
# What older runs had: the head options added since, then flip augmentation and init.
SAVED_OPTIONS = {f"recon.{k}": v for k, v in SAVED_BEFORE.items()} | {"flip": 0.0, "init": None}
# The options that fix the head's architecture: a head given as init= must agree on them.
ARCHITECTURE = ("dim", "depth", "num_heads", "mlp_ratio", "head_hidden", "pose_frame", "dense_head", "dpt_features")


def _check_out(out: Path) -> bool:
    """True to resume from out/, False for a fresh run; refuses anything else."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise PixioError(f"out={out} is a file: give a folder for the run (nothing was changed)")
    if not (out / "config.json").is_file():
        if any(out.iterdir()):
            raise PixioError(f"out={out} holds something other than a recon run: choose another out= (nothing changed)")
        return False
    return bool(list_checkpoints(out))


def _check_options(cfg: TrainReconConfig) -> None:
    size = size_pair(cfg.image_size)
    if size[0] % 16 or size[1] % 16:
        raise PixioError(f"image_size={cfg.image_size}: use a multiple of 16 (the patch size)")
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.save_every < 1:
        raise PixioError("steps, batch_size and save_every must be at least 1")
    if cfg.min_views < 2:
        raise PixioError(
            f"min_views={cfg.min_views}: training needs sets of at least 2 views (poses are relative to view 0)"
        )
    if not 0.0 <= cfg.flip <= 1.0:
        raise PixioError(f"flip={cfg.flip}: give the chance of flipping a view set, in [0, 1]")


# ---- the job --------------------------------------------------------------------------------


def run_train(cfg: TrainReconConfig) -> int:
    with torch_threads(cfg.threads):
        return _train(cfg)


def _train(cfg: TrainReconConfig) -> int:
    _check_options(cfg)
    out, size = Path(cfg.out), size_pair(cfg.image_size)
    ckpt = None
    if _check_out(out):
        ckpt = resume_checkpoint(out, to_dict(cfg), RESUMABLE_CHANGES, "choose another out=", added=SAVED_OPTIONS)
    device = pick_device(cfg.device)
    scenes = load_scenes(cfg.data, size, geometry=True, min_views=2, limit=cfg.scenes, progress=cfg.progress)
    val_scenes = load_scenes(cfg.val, size, geometry=True, min_views=2, progress=cfg.progress) if cfg.val else []
    with run_folder(out):  # a refused run leaves no folder behind (a random encoder is drawn into it)
        tokens, mirrored, val_tokens, encoder_info = _tokens(
            cfg, out, size, scenes, val_scenes, device, resuming=ckpt is not None
        )
        torch.manual_seed(cfg.seed)
        model = ReconModel(cfg.recon, tokens[0].shape[-1], 16)
        if cfg.init and ckpt is None:  # a resumed run's weights come from its checkpoint
            _init_from(model, cfg, encoder_info)
    model = model.to(device)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay, NO_DECAY), lr=cfg.lr, betas=(0.9, 0.95))
    meta = {"train_config": to_dict(cfg), "encoder": encoder_info, "image_size": list(size), "scenes": len(scenes)}
    write_json(out / "config.json", meta)
    steps = _Steps(cfg, model, ReconLoss(cfg.recon), scenes, (tokens, mirrored), val_scenes, val_tokens, device)
    run = Run(
        kind="train-recon",
        run_dir=out,
        config=to_dict(cfg),
        model=model,
        optimizer=optimizer,
        schedule=WarmupCosine(cfg.lr, cfg.warmup_steps, cfg.steps, min_lr=0.01 * cfg.lr),
        total=cfg.steps,
        step_fn=steps,
        samples_per_step=cfg.batch_size,
        log_every=cfg.log_every,
        save_every=cfg.save_every,
        guard=LossGuard(cfg.explode_factor, cfg.explode_patience),
        grad_clip=cfg.grad_clip,
        advice=f"resume with a lower lr= (e.g. lr={cfg.lr / 3:.2g}) and the same out=",
        after_step=steps.after_step,
        export=lambda step: model.save(out / MODEL, {**meta, "step": step}),
        progress=cfg.progress,
    )
    run.fit(ckpt, "pixio_robot_train_recon")
    print(f"{out}: {cfg.steps} steps; head in {out / MODEL}")
    return 0


class _Steps:
    """train-recon's step: a batch of view sets from the cached tokens, forward, backward."""

    def __init__(self, cfg: TrainReconConfig, model, loss_fn, scenes, tokens, val_scenes, val_tokens, device):
        self.cfg, self.model, self.loss_fn, self.device = cfg, model, loss_fn, device
        (self.tokens, self.mirrored), self.scenes = tokens, scenes  # mirrored: None without flip
        self.val_scenes, self.val_tokens = val_scenes, val_tokens
        views = [s.num_views for s in scenes]
        self.sampler = ViewSetSampler(views, cfg.min_views, cfg.max_views, cfg.batch_size, cfg.seed)
        self.val_sets = fixed_view_sets([s.num_views for s in val_scenes], cfg.min_views, 1, cfg.seed)[:64]
        self.gen = torch.Generator()

    def __call__(self, step: int) -> tuple[float, dict]:
        sets = self.sampler(step)
        self.gen.manual_seed(self.cfg.seed * 1_000_003 + step)  # resumed runs draw the same
        known = torch.rand(len(sets), len(sets[0][1]), generator=self.gen) >= self.cfg.recon.intrinsics_dropout
        mirror = None
        if self.cfg.flip > 0:  # the mirrored scene is as real as the scene: twice the views to learn from
            mirror = (torch.rand(len(sets), generator=self.gen) < self.cfg.flip).tolist()
        x, tgt = collate(sets, self.tokens, self.scenes, self.mirrored, mirror)
        known |= ~self.model.assumed_camera(tgt.K, x.shape[2] * self.model.patch_size)
        pred = self.model(x.to(self.device), tgt.K.to(self.device), known)
        loss, terms = self.loss_fn(pred, tgt.to(self.device))
        if torch.isfinite(loss):
            loss.backward()
        return loss.item(), terms | {"views": x.shape[1], "m": pred.scale.mean().item()}

    def after_step(self, done: int, logging: bool) -> dict:
        """val_loss at each save: a column in every row (NaN between saves), the CSV header is fixed."""
        if not self.val_sets or not logging:
            return {}
        if done % self.cfg.save_every and done != self.cfg.steps:
            return {"val_loss": math.nan}
        return {
            "val_loss": _val_loss(
                self.model, self.loss_fn, self.val_sets, self.val_tokens, self.val_scenes, self.device
            )
        }


def _tokens(cfg, out: Path, size, scenes, val_scenes, device, resuming: bool):
    """The frozen encoder's tokens of every scene (cached on disk), and the encoder's record."""
    encoder, encoder_info = prepare_encoder(cfg.encoder, cfg.encoder_init, cfg.encoder_seed, out, size)
    if resuming:
        saved = json.loads((out / "config.json").read_text())["encoder"]["sha256"]
        if saved != encoder_info["sha256"]:
            raise PixioError(
                f"encoder={cfg.encoder} changed since this run started (sha256 {encoder_info['sha256'][:12]}, "
                f"recorded {saved[:12]}): a head only fits the encoder it was trained on; choose another out="
            )
    cache = TokenCache(encoder, encoder_info["sha256"], size, cfg.cache_dir or default_cache_dir(), device=device)
    bar = dict(unit="scene", disable=not cfg.progress, file=sys.stderr)
    tokens = [cache.tokens(s) for s in tqdm(scenes, desc="tokens", **bar)]
    mirrored = None
    if cfg.flip > 0:
        mirrored = [cache.tokens(s, mirrored=True) for s in tqdm(scenes, desc="flipped tokens", **bar)]
    val_tokens = [cache.tokens(s) for s in tqdm(val_scenes, desc="val tokens", **bar)]
    return tokens, mirrored, val_tokens, encoder_info


def _init_from(model: ReconModel, cfg: TrainReconConfig, encoder_info: dict) -> None:
    """Load the weights of the head named by init= (fine-tuning), after checking that it was
    trained on this run's encoder and has this run's architecture."""
    start, meta = ReconModel.load(resolve_weights(cfg.init))
    trained_on = (meta.get("encoder") or {}).get("sha256")
    if trained_on != encoder_info["sha256"]:
        raise PixioError(
            f"init={cfg.init} was trained on another encoder (sha256 {str(trained_on)[:12]}, this run's "
            f"{encoder_info['sha256'][:12]}): give encoder= the encoder it was trained on"
        )
    for key in ARCHITECTURE:
        have, want = getattr(start.config, key), getattr(cfg.recon, key)
        if have != want:
            raise PixioError(
                f"init={cfg.init} has recon.{key}={have!r}, this run recon.{key}={want!r}: give recon.{key}={have!r}"
            )
    model.load_state_dict(start.state_dict())


@torch.no_grad()
def _val_loss(model, loss_fn, sets, tokens, scenes, device) -> float:
    model.eval()
    total = 0.0
    for start in range(0, len(sets), 8):
        x, tgt = collate(sets[start : start + 8], tokens, scenes)
        total += loss_fn(model(x.to(device)), tgt.to(device))[0].item() * x.shape[0]
    model.train()
    return total / len(sets)
