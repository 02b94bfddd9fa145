"""`pixio-robot train-recon`: train the head on cached frozen-encoder tokens.

    pixio-robot train-recon data=[captures/train] encoder=encoder.safetensors out=runs/recon

The run folder holds
- `model.safetensors`: the head (config, encoder record, image size in its header), what
  `eval-recon` and `recon` read;
- `checkpoint.safetensors`: head, AdamW moments and the step, to resume (same command again);
- `encoder.safetensors` for a random-initialised encoder, `config.json`, `metrics.csv`.

Both checkpoint files are written atomically every `save_every` steps. A loss that turns
non-finite, or larger than `explode_factor` times its running mean for `explode_patience`
steps in a row, stops the run with an error; those steps never reach the weights (they are
skipped), and the last checkpoint on disk is the last good one.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from pixio_robot.atomic import atomic_path, write_json
from pixio_robot.config import to_dict
from pixio_robot.devices import pick_device, torch_threads
from pixio_robot.errors import PixioError
from pixio_robot.viz import ScalarLog

from .backbone import prepare_encoder
from .commands import TrainReconConfig
from .data import load_scenes, size_pair
from .losses import ReconLoss
from .modeling_recon import ReconModel
from .sampling import ViewSetSampler, collate, fixed_view_sets
from .tokens import TokenCache, default_cache_dir

CHECKPOINT = "checkpoint.safetensors"
MODEL = "model.safetensors"
TRAIN_FORMAT = "pixio-robot/recon-train/1"
# Options that may change when a run is resumed (lr and the guard's: to recover from a loss
# explosion); everything else must match the saved run.
RESUMABLE_CHANGES = {
    *("steps", "save_every", "log_every", "progress", "device", "threads", "cache_dir", "out"),
    *("lr", "grad_clip", "explode_factor", "explode_patience"),
}


def lr_at(step: int, cfg: TrainReconConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to 1% of it at cfg.steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or name in ("reference", "scale_token") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class LossGuard:
    """Flags losses that are non-finite or far above their running mean (an exponential moving
    average over good steps, trusted after `warmup` of them)."""

    factor: float
    patience: int
    warmup: int = 20
    mean: float | None = None
    seen: int = 0
    bad_in_a_row: int = 0

    def check(self, loss: float) -> bool:
        """True for a good loss (update the weights), False for a bad one (skip the step)."""
        bad = not math.isfinite(loss) or (
            self.mean is not None and self.seen >= self.warmup and loss > self.factor * self.mean
        )
        if bad:
            self.bad_in_a_row += 1
            return False
        self.bad_in_a_row = 0
        self.seen += 1
        self.mean = loss if self.mean is None else 0.98 * self.mean + 0.02 * loss
        return True

    @property
    def exploded(self) -> bool:
        return self.bad_in_a_row >= self.patience


# ---- checkpoints ----------------------------------------------------------------------------


def save_checkpoint(out: Path, model: ReconModel, optimizer, step: int, guard: LossGuard, meta: dict) -> None:
    """The resumable state first, then the deployable head: each file atomic on its own."""
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for name, value in state.items():
            tensors[f"optim.{idx}.{name}"] = torch.as_tensor(value).detach().contiguous().cpu()
    header = {
        "format": TRAIN_FORMAT,
        "step": str(step),
        "guard": json.dumps({"mean": guard.mean, "seen": guard.seen}),
        "param_groups": json.dumps(opt["param_groups"]),
        "train_config": json.dumps(meta["train_config"]),
    }
    with atomic_path(out / CHECKPOINT) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    model.save(out / MODEL, {**meta, "step": step})


def load_checkpoint(out: Path, model: ReconModel, optimizer, guard: LossGuard) -> int:
    with safe_open(str(out / CHECKPOINT), "pt") as f:
        header = f.metadata()
        if header.get("format") != TRAIN_FORMAT:
            raise PixioError(f"{out / CHECKPOINT}: not a train-recon checkpoint")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(header["param_groups"])})
    g = json.loads(header["guard"])
    guard.mean, guard.seen = g["mean"], g["seen"]
    return int(header["step"])


def _check_resume(out: Path, cfg: TrainReconConfig) -> bool:
    """True to resume from out/, False for a fresh run; refuses anything else."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise PixioError(f"out={out} is a file: give a folder for the run (nothing was changed)")
    if not (out / "config.json").is_file():
        if any(out.iterdir()):
            raise PixioError(f"out={out} holds something other than a recon run: choose another out= (nothing changed)")
        return False
    saved = json.loads((out / "config.json").read_text())["train_config"]
    now = to_dict(cfg)
    differ = sorted(k for k in set(saved) | set(now) if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k))
    if differ:
        raise PixioError(
            f"out={out} holds a run with other settings ({', '.join(differ)}): resume it with the same "
            f"settings (only {', '.join(sorted(RESUMABLE_CHANGES - {'out'}))} may change) or choose another out="
        )
    return (out / CHECKPOINT).is_file()


# ---- the loop -------------------------------------------------------------------------------


def run_train(cfg: TrainReconConfig) -> int:
    with torch_threads(cfg.threads):
        return _train(cfg)


def _train(cfg: TrainReconConfig) -> int:
    out = Path(cfg.out)
    size = size_pair(cfg.image_size)
    if size[0] % 16 or size[1] % 16:
        raise PixioError(f"image_size={cfg.image_size}: use a multiple of 16 (the patch size)")
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.save_every < 1:
        raise PixioError("steps, batch_size and save_every must be at least 1")
    if cfg.min_views < 2:
        raise PixioError(
            f"min_views={cfg.min_views}: training needs sets of at least 2 views (poses are relative to view 0)"
        )
    resume = _check_resume(out, cfg)
    device = pick_device(cfg.device)

    scenes = load_scenes(cfg.data, size, geometry=True, min_views=2, limit=cfg.scenes, progress=cfg.progress)
    val_scenes = load_scenes(cfg.val, size, geometry=True, min_views=2, progress=cfg.progress) if cfg.val else []
    out.mkdir(parents=True, exist_ok=True)
    encoder, encoder_info = prepare_encoder(cfg.encoder, cfg.encoder_init, cfg.encoder_seed, out, size)
    if resume:
        saved = json.loads((out / "config.json").read_text())["encoder"]["sha256"]
        if saved != encoder_info["sha256"]:
            raise PixioError(
                f"encoder={cfg.encoder} changed since this run started (sha256 {encoder_info['sha256'][:12]}, "
                f"recorded {saved[:12]}): a head only fits the encoder it was trained on; choose another out="
            )
    cache = TokenCache(encoder, encoder_info["sha256"], size, cfg.cache_dir or default_cache_dir(), device=device)
    bar = dict(unit="scene", disable=not cfg.progress, file=sys.stderr)
    tokens = [cache.tokens(s) for s in tqdm(scenes, desc="tokens", **bar)]
    val_tokens = [cache.tokens(s) for s in tqdm(val_scenes, desc="val tokens", **bar)]
    del encoder, cache  # frozen and cached: training needs only the tokens

    torch.manual_seed(cfg.seed)
    model = ReconModel(cfg.recon, tokens[0].shape[-1], 16).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))
    loss_fn = ReconLoss(cfg.recon)
    guard = LossGuard(cfg.explode_factor, cfg.explode_patience)
    meta = {
        "train_config": to_dict(cfg),
        "encoder": encoder_info,
        "image_size": list(size),
        "scenes": len(scenes),
    }
    write_json(out / "config.json", meta)
    start = load_checkpoint(out, model, optimizer, guard) if resume else 0
    if start >= cfg.steps:
        print(f"{out}: already trained for {start} steps (steps={cfg.steps}): raise steps= to train on")
        return 0
    sampler = ViewSetSampler([s.num_views for s in scenes], cfg.min_views, cfg.max_views, cfg.batch_size, cfg.seed)
    val_sets = fixed_view_sets([s.num_views for s in val_scenes], cfg.min_views, 1, cfg.seed)[:64]
    gen = torch.Generator().manual_seed(cfg.seed)

    model.train()
    last_saved = completed = start
    with (
        ScalarLog(out / "metrics.csv", resume_step=start) as log,
        tqdm(total=cfg.steps, initial=start, desc="train-recon", unit="step", disable=not cfg.progress) as pbar,
    ):
        try:
            for step in range(start, cfg.steps):
                lr = lr_at(step, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x, tgt = collate(sampler(step), tokens, scenes)
                gen.manual_seed(cfg.seed * 1_000_003 + step)  # resumed runs draw the same
                known = torch.rand(x.shape[:2], generator=gen) >= cfg.recon.intrinsics_dropout
                pred = model(x.to(device), tgt.K.to(device), known)
                loss, terms = loss_fn(pred, tgt.to(device))
                if guard.check(loss.item()):
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    grad = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
                    if torch.isfinite(grad):
                        optimizer.step()
                    else:
                        guard.bad_in_a_row += 1
                if guard.exploded:
                    raise PixioError(
                        f"loss exploded at step {step + 1} (loss {loss.item():.4g}, running mean "
                        f"{(guard.mean or float('nan')):.4g}, {guard.bad_in_a_row} bad steps in a row): training "
                        f"stopped; the last good checkpoint (step {last_saved}) is kept in {out}. Resume with a "
                        f"lower lr= (e.g. lr={cfg.lr / 3:.2g}) and the same out="
                    )
                completed = done = step + 1
                pbar.update(1)
                pbar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
                save = done % cfg.save_every == 0 or done == cfg.steps
                if done % cfg.log_every == 0 or save:
                    row = {"loss": loss.item(), "lr": lr, "views": x.shape[1], "m": pred.scale.mean().item()}
                    if val_sets:  # a column in every row (NaN between saves): the CSV header is fixed
                        row["val_loss"] = (
                            _val_loss(model, loss_fn, val_sets, val_tokens, val_scenes, device) if save else math.nan
                        )
                    log.log(done, **row, **terms)
                if save:
                    save_checkpoint(out, model, optimizer, done, guard, meta)
                    last_saved = done
        except KeyboardInterrupt:
            if guard.bad_in_a_row == 0 and completed > last_saved:
                save_checkpoint(out, model, optimizer, completed, guard, meta)
                last_saved = completed
            print(f"\ninterrupted: step {last_saved} is saved in {out}; the same command continues", file=sys.stderr)
            raise
    print(f"{out}: {cfg.steps} steps, last loss {loss.item():.4f}; head in {out / MODEL}")
    return 0


@torch.no_grad()
def _val_loss(model, loss_fn, sets, tokens, scenes, device) -> float:
    model.eval()
    total = 0.0
    for start in range(0, len(sets), 8):
        x, tgt = collate(sets[start : start + 8], tokens, scenes)
        total += loss_fn(model(x.to(device)), tgt.to(device))[0].item() * x.shape[0]
    model.train()
    return total / len(sets)
