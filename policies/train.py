"""`pixio-robot train-policy`: behaviour cloning of a head on a frozen encoder.

    pixio-robot train-policy dataset=data/push encoder=vits16.safetensors head=cortexbench out=runs/push

Steps: read the demonstrations (`data.Demonstrations`), build the frozen backbone, encode every
frame once into the feature cache (`cache.py`; or, with `cache=off`, encode augmented images
every step), then train the head with the head's optimiser settings, normalising state and
actions with the dataset's statistics. Every `eval_every` epochs the last checkpoint is run in
simulation on validation seeds (from 50000; `eval-policy` tests from 100000, collection uses
0..): the best one so far is kept next to the last.

Run folder:
    train_config.json       the full configuration (a resumed run must match it)
    metrics.csv             per epoch: loss, learning rate, samples/s, validation success
    training.rrd            the same scalars as a Rerun recording (per training session)
    checkpoints/last/       LeRobot pretrained folder + training_state.safetensors (optimiser)
    checkpoints/previous/   the checkpoint before last (a resume falls back to it if last is damaged)
    checkpoints/best/       the best evaluated checkpoint (= last when nothing was evaluated)
    summary.json            what the run did: epochs, losses, evaluations, cache, timings

Shuffling and dropout draw from generators seeded by (seed, epoch), so a resumed run repeats
exactly what the uninterrupted one would have done.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from pixio_robot.atomic import atomic_dir, atomic_path, write_json
from pixio_robot.config import to_dict
from pixio_robot.devices import pick_device
from pixio_robot.errors import PixioError
from pixio_robot.viz import ScalarLog, rerun_recording

from .backbones import load_backbone, weights_sha256
from .cache import CacheKey, FeatureCache, ensure_cache
from .commands import VALIDATION_SEED, TrainPolicyConfig, command_config
from .configuration_cortexbench import CortexBenchConfig
from .configuration_pixio import PixioConfig
from .data import Demonstrations
from .heads import HeadConfig, head_config, head_inputs
from .modeling_pixio import PixioPolicy, join_views, save_policy

TRAIN_STATE = "training_state.safetensors"
# Options that may change when a run is resumed; every other one must match.
# `out` may change: a run folder that was moved or copied resumes where it now is.
RESUMABLE = {"epochs", "resume", "progress", "eval_workers", "device", "save_every", "threads", "out"}


@dataclass
class TrainResult:
    out: Path
    last: Path
    best: Path
    epochs: int
    losses: list[float]  # mean training loss per epoch (this session's and earlier ones)
    best_success: float | None
    caches: list[FeatureCache]  # one per camera (none with cache=off)
    seconds: float


# ---- where features come from ---------------------------------------------------------------


class CachedFeatures:
    """Features of frame indices from the memory-mapped caches (one per camera), joined."""

    def __init__(self, caches: list[FeatureCache], inputs: tuple[str, ...]):
        self.caches, self.inputs = caches, inputs

    def __call__(self, frames: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return join_views([{k: cache.gather(k, frames) for k in self.inputs} for cache in self.caches])


class EncodedImages:
    """Features of frame indices computed from the decoded images (one array per camera) at
    every step, with random shifts (DrQ-style: pad 4 pixels by replication, crop back at a
    random offset)."""

    def __init__(self, frames: list[np.ndarray], policy: PixioPolicy, augment: bool, pad: int = 4):
        self.frames = [torch.from_numpy(f) for f in frames]  # per camera (N, H, W, 3) uint8
        self.policy, self.augment, self.pad = policy, augment, pad

    def __call__(self, frames: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        unique, inverse = torch.unique(frames, return_inverse=True)
        views = []
        for camera_frames in self.frames:
            images = camera_frames[unique].permute(0, 3, 1, 2).float().div_(255)
            if self.augment:
                images = random_shift(images, self.pad, generator)
            views.append(self.policy.encode(images))
        return {k: v[inverse] for k, v in join_views(views).items()}


class EnvironmentStates:
    """The oracle's "features": the recorded environment state of frame indices."""

    def __init__(self, env_states: np.ndarray):
        self.env_states = torch.from_numpy(env_states)

    def __call__(self, frames: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"global": self.env_states[frames]}


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    dx, dy = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


# ---- the run ---------------------------------------------------------------------------------


def train_policy(cfg: TrainPolicyConfig | None = None, **options) -> TrainResult:
    """`pixio-robot train-policy` as a function: `cfg`, or its fields as keywords, e.g.
    `train_policy(dataset="data/push", encoder="vitn16", head="chunking", epochs=20, out="runs/push")`
    (`head`: a name, a dict of head options with "name", or a head config). Trains as the
    module doc says, with progress bars (`progress=False`: none); bad input raises PixioError
    before anything is written. The run folder is `result.out`, the policy to evaluate
    `result.best`."""
    cfg = command_config(TrainPolicyConfig, cfg, options)
    started = time.perf_counter()
    out = Path(cfg.out)
    head = cfg.head if cfg.head is not None else "cortexbench"
    hc = head_config({"name": head} if isinstance(head, str) else head)
    _check_options(cfg)
    config_dict = to_dict(cfg) | {"head": dataclasses.asdict(hc)}
    last_dir, best_dir = out / "checkpoints/last", out / "checkpoints/best"
    resumed = _check_out(out, cfg, config_dict, _resumable(out))

    demos = Demonstrations.load(cfg.dataset, cfg.cameras)
    device = pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    backbone, spec = load_backbone(
        cfg.encoder, cfg.encoder_init, cfg.encoder_weights, seed=cfg.seed, state_dim=_env_state_dim(demos)
    )
    torch.manual_seed(cfg.seed)  # the head's initialisation
    policy = make_policy(demos, backbone, spec, hc, cfg.layer, cfg.image_size, device)
    pconfig = policy.config
    optimizer = torch.optim.AdamW(policy.head.parameters(), lr=hc.lr, weight_decay=hc.weight_decay)
    inputs_needed = head_inputs(hc)
    caches = []
    if pconfig.oracle:
        source = EnvironmentStates(demos.env_states)
    elif cfg.cache != "off":
        caches = _ensure_caches(
            demos, backbone, spec, pconfig, "patches" in inputs_needed, cfg.cache, cfg.cache_dtype, cfg.progress
        )
        source = CachedFeatures(caches, inputs_needed)
        for cache in caches:
            print(f"features: {'built' if cache.built else 'reused'} {cache.path}", file=sys.stderr)
    else:
        source = EncodedImages([demos.decode_frames(c) for c in demos.cameras], policy, cfg.augment)

    state = {"epoch": 0, "step": 0, "best_success": None, "best_epoch": None, "losses": []}
    if resumed:
        state = _load_training_state(_resumable(out), policy, optimizer, pconfig)
    else:  # every check has passed: only now is anything written to out=
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "train_config.json", config_dict)

    states = torch.from_numpy(demos.states)
    actions = torch.from_numpy(demos.actions)
    n = len(demos)
    spec_env = demos.spec
    eval_seeds = list(range(VALIDATION_SEED, VALIDATION_SEED + cfg.eval_episodes))

    from tqdm import tqdm

    with (
        rerun_recording(out / "training.rrd", application_id="pixio_robot_train_policy") as rec,
        ScalarLog(out / "metrics.csv", rec, resume_step=state["step"] if resumed else None) as log,
    ):
        bar = tqdm(total=cfg.epochs, initial=state["epoch"], desc="train", unit="epoch", disable=not cfg.progress)
        for epoch in range(state["epoch"], cfg.epochs):
            t0 = time.perf_counter()
            generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
            torch.manual_seed(cfg.seed * 1_000_033 + epoch)  # dropout
            policy.train()
            total, count = 0.0, 0
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, cfg.batch_size):
                index = order[start : start + cfg.batch_size]
                if len(index) < 2:  # BatchNorm needs two samples
                    continue
                history = demos.history_indices(index, hc.history)
                targets, pad = demos.chunk_indices(index, hc.chunk_size)
                features = {k: v.to(device) for k, v in source(history, generator).items()}
                loss = policy.loss_from_features(
                    features, states[index].to(device), actions[targets].to(device), pad.to(device)
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(index)
                count += len(index)
                state["step"] += 1
            mean_loss = total / max(count, 1)
            if not math.isfinite(mean_loss):
                raise PixioError(f"the training loss became {mean_loss} at epoch {epoch + 1}: lower the head's lr")
            state["epoch"] = epoch + 1
            state["losses"].append(mean_loss)
            seconds = time.perf_counter() - t0
            success = float("nan")
            final = epoch + 1 == cfg.epochs
            evaluate_now = cfg.eval_every > 0 and ((epoch + 1) % cfg.eval_every == 0 or final)
            if evaluate_now or final or (epoch + 1) % max(cfg.save_every, 1) == 0:
                _save(policy, optimizer, state, last_dir)
            if evaluate_now:
                from .evaluation import evaluate

                result = evaluate(last_dir, spec_env, eval_seeds, workers=cfg.eval_workers, progress=False)
                success = result["success_rate"]
                if state["best_success"] is None or success >= state["best_success"]:
                    state["best_success"], state["best_epoch"] = success, epoch + 1
                    _copy_checkpoint(last_dir, best_dir)
                    _save(policy, optimizer, state, last_dir)  # remember the new best in the state
            log.log(
                state["step"],
                epoch=epoch + 1,
                loss=mean_loss,
                lr=optimizer.param_groups[0]["lr"],
                samples_per_s=count / max(seconds, 1e-9),
                val_success=success,
            )
            bar.set_postfix(loss=f"{mean_loss:.4f}", **({"val": f"{success:.0%}"} if evaluate_now else {}))
            bar.update(1)
        bar.close()
    if cfg.eval_every == 0 or not best_dir.exists():
        _copy_checkpoint(last_dir, best_dir)
    elapsed = time.perf_counter() - started
    summary = {
        "epochs": state["epoch"],
        "steps": state["step"],
        "final_loss": state["losses"][-1] if state["losses"] else None,
        "first_loss": state["losses"][0] if state["losses"] else None,
        "best_epoch": state["best_epoch"],
        "best_validation_success": state["best_success"],
        "validation_seeds": [eval_seeds[0], eval_seeds[-1]] if cfg.eval_every and eval_seeds else None,
        "best_is": "best validation success" if state["best_epoch"] else "last (nothing evaluated)",
        "frames": n,
        "episodes": demos.num_episodes,
        "cache": [{"path": str(c.path), "built": c.built} for c in caches] or None,
        "encoder_sha256": pconfig.encoder_sha256,
        "seconds": elapsed,
    }
    write_json(out / "summary.json", summary)
    return TrainResult(out, last_dir, best_dir, state["epoch"], state["losses"], state["best_success"], caches, elapsed)


def make_policy(
    demos: Demonstrations,
    backbone,
    spec: dict,
    head: HeadConfig | None = None,
    layer: int = -1,
    image_size: int | None = None,
    device: torch.device | str = "cpu",
) -> PixioPolicy:
    """A fresh policy for a dataset: the cameras it was loaded with, state and action sizes,
    normalisation statistics and environment, on a built backbone (see `backbones.load_backbone`)."""
    device = torch.device(device)
    oracle = spec["kind"] == "oracle"
    cameras = [] if oracle else list(demos.cameras)
    env_state_dim = _env_state_dim(demos) if oracle else 0
    inputs, outputs = PixioConfig.features_for(
        cameras, demos.image_shape, demos.states.shape[1], demos.actions.shape[1], env_state_dim
    )
    config = PixioConfig(
        device=device.type,
        backbone=spec,
        encoder_sha256=weights_sha256(backbone),
        layer=backbone.block_indices(layer)[0],
        image_size=[image_size, image_size] if image_size else list(demos.image_shape),
        cameras=cameras,
        head=dataclasses.asdict(head or CortexBenchConfig()),
        env=demos.spec.to_dict(),
        dataset=str(demos.root),
        input_features=inputs,
        output_features=outputs,
    )
    return PixioPolicy(config, dataset_stats=demos.stats, backbone=backbone).to(device)


def cache_features(
    dataset: str | Path,
    encoder: str,
    *,
    encoder_init: str = "pretrained",
    encoder_weights: str | None = None,
    layer: int = -1,
    image_size: int | None = None,
    cameras: str | list[str] | None = None,
    patches: bool = False,
    location: str = "auto",
    dtype: str = "float16",
    seed: int = 100,
    progress: bool = True,
) -> list[FeatureCache]:
    """Encode a dataset's frames into its feature caches now, one per camera (train-policy does
    it on its first run; the arguments mean what train-policy's options of the same names do,
    and the same values give the caches train-policy will reuse)."""
    demos = Demonstrations.load(dataset, cameras)
    backbone, spec = load_backbone(encoder, encoder_init, encoder_weights, seed=seed)
    policy = make_policy(demos, backbone, spec, layer=layer, image_size=image_size)
    return _ensure_caches(demos, backbone, spec, policy.config, patches, location, dtype, progress)


def _ensure_caches(
    demos: Demonstrations,
    backbone,
    spec: dict,
    config: PixioConfig,
    patches: bool,
    location: str,
    dtype: str,
    progress: bool,
) -> list[FeatureCache]:
    from pixio_robot.extract import FeatureExtractor

    device = pick_device(config.device)
    extractor = FeatureExtractor(
        backbone, tuple(config.image_size), [config.layer], patches, config.encode_batch_size, device
    )
    caches = []
    for camera in demos.cameras:
        key = CacheKey(spec["name"], config.encoder_sha256, config.layer, tuple(config.image_size), camera, dtype)
        # an explicit cache folder holds one camera's features: several cameras get a subfolder each
        where = location if location in ("auto", "", None) or len(demos.cameras) == 1 else str(Path(location) / camera)
        caches.append(ensure_cache(demos, extractor, key, patches, where, progress))
    return caches


def _env_state_dim(demos: Demonstrations) -> int:
    return 0 if demos.env_states is None else demos.env_states.shape[1]


def _check_options(cfg: TrainPolicyConfig) -> None:
    for name in ("epochs", "batch_size", "eval_episodes", "eval_workers"):
        if getattr(cfg, name) < 1:
            raise PixioError(f"{name}={getattr(cfg, name)}: use 1 or more")
    if cfg.batch_size < 2:
        raise PixioError(f"batch_size={cfg.batch_size}: BatchNorm needs at least 2")
    if cfg.eval_every < 0:
        raise PixioError(f"eval_every={cfg.eval_every}: use 0 (never) or a number of epochs")
    if cfg.cache_dtype not in ("float16", "float32"):
        raise PixioError(f"cache_dtype={cfg.cache_dtype!r}: use float16 or float32")


def _resumable(out: Path) -> list[Path]:
    """The checkpoints a resume may start from, newest first: `last`, and `previous` (the one
    before it, kept so that a damaged `last` costs `save_every` epochs, not the run)."""
    return [d for d in (out / "checkpoints/last", out / "checkpoints/previous") if (d / TRAIN_STATE).is_file()]


def _check_out(out: Path, cfg: TrainPolicyConfig, config_dict: dict, checkpoints: list[Path]) -> bool:
    """True when resuming; refuses an occupied folder otherwise (nothing is touched)."""
    occupied = out.exists() and (not out.is_dir() or any(out.iterdir()))
    if not cfg.resume:
        if occupied:
            raise PixioError(f"out={out} is not empty: pass resume=true to continue that run, or choose another out=")
        return False
    if not checkpoints:
        if occupied:
            raise PixioError(
                f"out={out} has no checkpoint to resume from ({out / 'checkpoints/last'}): start a new run elsewhere"
            )
        return False  # nothing to resume: a fresh run
    saved = json.loads((out / "train_config.json").read_text())
    for key in sorted(set(saved) | set(config_dict)):
        if key not in RESUMABLE and saved.get(key) != config_dict.get(key):
            raise PixioError(
                f"cannot resume {out}: it was trained with {key}={saved.get(key)!r}, this command has "
                f"{key}={config_dict.get(key)!r} (only {', '.join(sorted(RESUMABLE))} may change)"
            )
    return True


def _save(policy: PixioPolicy, optimizer: torch.optim.Optimizer, state: dict, folder: Path) -> None:
    """Write `folder` (checkpoints/last); the checkpoint it replaces becomes checkpoints/previous.
    A kill at any point leaves one of the two whole."""
    if (folder / TRAIN_STATE).is_file():
        previous = folder.parent / "previous"
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(folder, previous)

    def write_state(path: Path) -> None:
        opt = optimizer.state_dict()
        tensors = {
            f"optimizer.{i}.{name}": torch.as_tensor(value).contiguous()
            for i, slots in opt["state"].items()
            for name, value in slots.items()
        }
        meta = {"training": json.dumps(state), "param_groups": json.dumps(opt["param_groups"])}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    save_policy(policy, folder, extra={TRAIN_STATE: write_state})


def _load_training_state(
    checkpoints: list[Path], policy: PixioPolicy, optimizer: torch.optim.Optimizer, config: PixioConfig
) -> dict:
    """Restore from the newest readable checkpoint (a damaged one is named and skipped)."""
    from safetensors import SafetensorError

    for folder in checkpoints:
        saved = json.loads((folder / "config.json").read_text())
        if saved.get("encoder_sha256") != config.encoder_sha256:
            raise PixioError(f"cannot resume {folder}: it was trained on another encoder's features")
        try:
            return _read_training_state(folder, policy, optimizer)
        except (SafetensorError, OSError, KeyError, ValueError) as e:
            print(f"train-policy: warning: {folder} is unreadable ({e}); trying an older checkpoint", file=sys.stderr)
    raise PixioError(
        f"cannot resume: no readable checkpoint in {checkpoints[0].parent}: start a new run (another out=)"
    )


def _read_training_state(folder: Path, policy: PixioPolicy, optimizer: torch.optim.Optimizer) -> dict:
    from safetensors import safe_open

    model = load_file(str(folder / "model.safetensors"))
    tensors = load_file(str(folder / TRAIN_STATE))
    with safe_open(str(folder / TRAIN_STATE), framework="pt") as f:
        meta = f.metadata()
    training = json.loads(meta["training"])
    opt_state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, i, name = key.split(".", 2)
        opt_state.setdefault(int(i), {})[name] = value
    policy.load_state_dict(model)  # only once every file has been read whole
    optimizer.load_state_dict({"state": opt_state, "param_groups": json.loads(meta["param_groups"])})
    return training


def _copy_checkpoint(src: Path, dst: Path) -> None:
    with atomic_dir(dst) as tmp:
        for f in src.iterdir():
            if f.name != TRAIN_STATE:
                shutil.copy2(f, tmp / f.name)


def run(cfg: TrainPolicyConfig) -> int:
    result = train_policy(cfg)
    losses = result.losses
    best = "" if result.best_success is None else f", best validation success {result.best_success:.0%}"
    print(
        f"{result.out}: {result.epochs} epochs in {result.seconds:.0f}s, loss {losses[0]:.4f} -> {losses[-1]:.4f}"
        f"{best}; policy: {result.best} (evaluate: pixio-robot eval-policy policy={result.best} out=...)"
    )
    return 0
