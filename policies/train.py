"""`pixio-robot train-policy`: behaviour cloning of a head on a frozen encoder.

    pixio-robot train-policy dataset=data/push encoder=vits16.safetensors head=cortexbench out=runs/push

Steps: read the demonstrations (`data.Demonstrations`), build the frozen backbone, encode every
frame once into the feature cache (`cache.py`; or, with `cache=off`, encode augmented images
every step), then train the head with the head's optimiser settings, normalising state and
actions with the dataset's statistics. Every `eval_every` epochs the last checkpoint is run in
simulation on validation seeds (from 50000; `eval-policy` tests from 100000, collection uses
0..): the best one so far is kept next to the last.

The loop, checkpoints and logs are the core's training harness (`pixio_robot.harness`); this
module holds the data, the model and the step function (`_Epochs`).

Run folder:
    train_config.json       the full configuration (a resumed run must match it)
    metrics.csv             per epoch: loss, learning rate, samples/s, validation success
    training.rrd            the same scalars as a Rerun recording
    checkpoints/step-*.pt   the harness's resumable state (the newest two; a damaged one is skipped)
    checkpoints/last/       the policy as a LeRobot pretrained folder, at the last checkpoint
    checkpoints/best/       the best evaluated policy (= last when nothing was evaluated)
    summary.json            what the run did: epochs, losses, evaluations, cache, timings

Shuffling, shifts and dropout draw from seeds of (seed, epoch) and (seed, step), so a resumed
run repeats exactly what the uninterrupted one would have done. A batch is shuffled frames, or
with `consecutive=k` runs of k consecutive frames of one episode (`epoch_order`); heads that code
each frame on its own (the CortexBench family) get every distinct frame of a batch once, so the
overlapping histories of a run cost about one frame per sample instead of three.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pixio_robot.atomic import atomic_dir, write_json
from pixio_robot.config import to_dict
from pixio_robot.devices import pick_device
from pixio_robot.errors import PixioError
from pixio_robot.harness import Run, WarmupCosine, list_checkpoints, param_groups, resume_checkpoint

from .backbones import load_backbone, weights_sha256
from .cache import CacheKey, FeatureCache, ensure_cache
from .commands import TEST_SEED, VALIDATION_SEED, TrainPolicyConfig, command_config
from .configuration_cortexbench import CortexBenchConfig
from .configuration_pixio import PixioConfig
from .data import Demonstrations
from .heads import HeadConfig, head_config, head_inputs
from .modeling_cortexbench import CortexBenchHead
from .modeling_pixio import PixioPolicy, join_views, save_policy

# Options that may change when a run is resumed; every other one must match.
# `out` may change: a run folder that was moved or copied resumes where it now is.
RESUMABLE = {"epochs", "resume", "progress", "eval_workers", "test_episodes", "device", "save_every", "threads", "out"}


@dataclass
class TrainResult:
    out: Path
    last: Path
    best: Path
    epochs: int
    losses: list[float]  # mean training loss per epoch (this session's and earlier ones)
    best_success: float | None
    caches: list[FeatureCache]  # one per camera (none with cache=off)
    seconds: float | None  # the whole run's, a resumed one's included (None: resumed from an older checkpoint)
    test: dict | None = None  # held-out success with test_episodes=N (also in summary.json)


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


def epoch_order(demos: Demonstrations, consecutive: int, generator: torch.Generator) -> torch.Tensor:
    """One epoch's order of every frame: shuffled frames, or with `consecutive` > 1 shuffled runs
    of that many consecutive frames of one episode (each episode cut into runs at a random
    offset per epoch), whose history windows overlap and so share most of their frames."""
    n = len(demos)
    if consecutive == 1:
        return torch.randperm(n, generator=generator)
    start = torch.from_numpy(demos.episode_start)
    _, episode = torch.unique(start, return_inverse=True)
    offset = torch.randint(0, consecutive, (int(episode.max()) + 1,), generator=generator)[episode]
    run = (torch.arange(n) - start + offset) // consecutive
    _, run = torch.unique(episode * n + run, return_inverse=True)  # one id per (episode, run)
    rank = torch.randperm(int(run.max()) + 1, generator=generator)[run]
    return torch.argsort(rank * n + torch.arange(n))  # runs in random order, frames in order within


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
    cfg = command_config("train-policy", TrainPolicyConfig, cfg, options)
    started = time.perf_counter()
    out = Path(cfg.out)
    head = cfg.head if cfg.head is not None else "cortexbench"
    hc = head_config({"name": head} if isinstance(head, str) else head)
    _check_options(cfg)
    config_dict = to_dict(cfg) | {"head": dataclasses.asdict(hc)}
    resuming = _check_out(out, cfg)

    demos = Demonstrations.load(cfg.dataset, cfg.cameras)
    device = pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    backbone, spec = load_backbone(
        cfg.encoder, cfg.encoder_init, cfg.encoder_weights, seed=cfg.seed, state_dim=_env_state_dim(demos)
    )
    torch.manual_seed(cfg.seed)  # the head's initialisation
    policy = make_policy(demos, backbone, spec, hc, cfg.layer, cfg.image_size, device)
    # the encoder's hash joins the options: a resumed run must read the same features
    config_dict["encoder_sha256"] = policy.config.encoder_sha256
    # runs saved before an option existed trained as its value here says
    added = {"lr_schedule": "constant", "consecutive": 1}
    ckpt = resume_checkpoint(out, config_dict, RESUMABLE, "start a new run (another out=)", added) if resuming else None
    source, caches = _feature_source(cfg, demos, backbone, spec, policy, head_inputs(hc))
    if ckpt is None:  # every check has passed: only now is anything written to out=
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "train_config.json", config_dict)
    steps = _Epochs(cfg, demos, policy, source, device, started)
    run = Run(
        kind="train-policy",
        run_dir=out,
        config=config_dict,
        model=policy,
        optimizer=torch.optim.AdamW(param_groups(policy.head, hc.weight_decay), lr=hc.lr),
        schedule=_schedule(cfg, hc.lr, cfg.epochs * steps.per_epoch),
        total=cfg.epochs * steps.per_epoch,
        step_fn=steps,
        samples_per_step=cfg.batch_size,
        log_every=steps.per_epoch,
        save_every=max(cfg.save_every, 1) * steps.per_epoch,
        advice="lower the head's learning rate (head.lr=...) and train again",
        after_step=steps.after_step,
        state=steps.state,
        export=lambda step: save_policy(policy, steps.last_dir),
        progress=cfg.progress,
    )
    if ckpt is not None:
        steps.restore(json.loads(ckpt["training"]))
    run.fit(ckpt, "pixio_robot_train_policy", rrd="training.rrd")
    if cfg.eval_every == 0 or not steps.best_dir.exists():
        _copy_checkpoint(steps.last_dir, steps.best_dir)
    result = _summarise(cfg, out, steps, caches, policy.config, steps.seconds())
    if cfg.test_episodes:  # a whole table cell in one command (and one -m sweep for a table)
        from .evaluation import evaluate

        seeds = range(TEST_SEED, TEST_SEED + cfg.test_episodes)
        test = evaluate(
            steps.best_dir, demos.spec, seeds, workers=cfg.eval_workers, out=out / "eval", progress=cfg.progress
        )
        result.test = {k: test[k] for k in ("success_rate", "ci95", "episodes")} | {
            "result": str(out / "eval/result.json")
        }
        summary = json.loads((out / "summary.json").read_text())
        write_json(out / "summary.json", summary | {"test": result.test})
    return result


def _feature_source(cfg: TrainPolicyConfig, demos, backbone, spec, policy, inputs_needed):
    """Where the head's inputs come from: the environment state (oracle), the feature caches,
    or (cache=off) the images encoded at every step."""
    if policy.config.oracle:
        return EnvironmentStates(demos.env_states), []
    if cfg.cache == "off":
        return EncodedImages([demos.decode_frames(c) for c in demos.cameras], policy, cfg.augment), []
    patches = "patches" in inputs_needed
    caches = _ensure_caches(demos, backbone, spec, policy.config, patches, cfg.cache, cfg.cache_dtype, cfg.progress)
    for cache in caches:
        print(f"features: {'built' if cache.built else 'reused'} {cache.path}", file=sys.stderr)
    return CachedFeatures(caches, inputs_needed), caches


class _Epochs:
    """train-policy's step function: mini-batches of the demonstrations (`epoch_order`), epoch by
    epoch (the order of epoch e and each step's random draws come from seeds of (seed, e) and
    (seed, step): a resumed run repeats the uninterrupted one), and at the end of every
    `eval_every` epochs a validation in simulation that keeps the best checkpoint."""

    def __init__(self, cfg: TrainPolicyConfig, demos: Demonstrations, policy: PixioPolicy, source, device, started):
        self.cfg, self.demos, self.policy, self.source, self.device = cfg, demos, policy, source, device
        self.hc = policy.config.head_config
        n, bs = len(demos), cfg.batch_size
        self.per_epoch = n // bs + (n % bs >= 2)  # a last batch of one is skipped: BatchNorm needs two
        if self.per_epoch == 0:
            raise PixioError(f"{cfg.dataset} holds {n} frame(s): BatchNorm needs at least 2")
        self.states, self.actions = torch.from_numpy(demos.states), torch.from_numpy(demos.actions)
        aux = getattr(self.hc, "aux_state", 0.0) > 0
        self.env_states = torch.from_numpy(demos.env_states) if aux else None
        self.last_dir, self.best_dir = Path(cfg.out) / "checkpoints/last", Path(cfg.out) / "checkpoints/best"
        self.eval_seeds = list(range(VALIDATION_SEED, VALIDATION_SEED + cfg.eval_episodes))
        self.best_success, self.best_epoch, self.losses = None, None, []
        self._order, self._epoch_loss = (-1, None), []
        # seconds spent before this process (a resumed run: until its last checkpoint), so that
        # summary.json times the whole run; None: resumed from a checkpoint saved before they were kept
        self.started, self.seconds_before = started, 0.0
        # heads whose frames are coded one by one get each distinct frame of a batch once
        self.per_frame = isinstance(policy.head, CortexBenchHead)

    def __call__(self, step: int) -> tuple[float, dict]:
        epoch, i = divmod(step, self.per_epoch)
        if self._order[0] != epoch:
            generator = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
            self._order = (epoch, epoch_order(self.demos, self.cfg.consecutive, generator))
        bs = self.cfg.batch_size
        index = self._order[1][i * bs : (i + 1) * bs]
        generator = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + 7919 * step + 1)  # shifts
        torch.manual_seed(self.cfg.seed * 1_000_033 + step)  # dropout
        history, _ = self.demos.windows(index, self.policy.config.observation_delta_indices)
        targets, pad = self.demos.windows(index, self.policy.config.action_delta_indices)
        frames = None
        if self.per_frame:
            history, frames = torch.unique(history, return_inverse=True)
            frames = frames.to(self.device)
        features = {k: v.to(self.device) for k, v in self.source(history, generator).items()}
        env_state = None if self.env_states is None else self.env_states[index].to(self.device)
        loss = self.policy.loss_from_features(
            features,
            self.states[index].to(self.device),
            self.actions[targets].to(self.device),
            pad.to(self.device),
            env_state,
            frames,
        )
        loss.backward()
        self._epoch_loss.append((loss.item(), len(index)))
        return loss.item(), {}

    def after_step(self, done: int, logging: bool) -> dict:
        if done % self.per_epoch:
            return {}
        epoch = done // self.per_epoch
        total = sum(loss * k for loss, k in self._epoch_loss) / sum(k for _, k in self._epoch_loss)
        self.losses.append(total)
        self._epoch_loss = []
        final = epoch == self.cfg.epochs
        success = math.nan
        if self.cfg.eval_every > 0 and (epoch % self.cfg.eval_every == 0 or final):
            success = self.validate(epoch)
        # the epoch's loss weighted by batch size (replaces the harness's mean over steps)
        return {"epoch": epoch, "loss": total, "val_success": success}

    def validate(self, epoch: int) -> float:
        from .evaluation import evaluate

        save_policy(self.policy, self.last_dir)
        result = evaluate(
            self.last_dir, self.demos.spec, self.eval_seeds, workers=self.cfg.eval_workers, progress=False
        )
        success = result["success_rate"]
        if self.best_success is None or success >= self.best_success:
            self.best_success, self.best_epoch = success, epoch
            _copy_checkpoint(self.last_dir, self.best_dir)
        return success

    def seconds(self) -> float | None:
        return None if self.seconds_before is None else self.seconds_before + time.perf_counter() - self.started

    def state(self) -> dict:
        kept = {"best_success": self.best_success, "best_epoch": self.best_epoch, "losses": self.losses}
        return {"training": json.dumps(kept | {"seconds": self.seconds()})}

    def restore(self, saved: dict) -> None:
        self.best_success, self.best_epoch, self.losses = saved["best_success"], saved["best_epoch"], saved["losses"]
        self.seconds_before = saved.get("seconds")


def _summarise(cfg, out: Path, steps: _Epochs, caches, pconfig: PixioConfig, elapsed: float | None) -> TrainResult:
    losses, seeds = steps.losses, steps.eval_seeds
    summary = {
        "epochs": len(losses),
        "steps": len(losses) * steps.per_epoch,
        "final_loss": losses[-1] if losses else None,
        "first_loss": losses[0] if losses else None,
        "best_epoch": steps.best_epoch,
        "best_validation_success": steps.best_success,
        "validation_seeds": [seeds[0], seeds[-1]] if cfg.eval_every and seeds else None,
        "best_is": "best validation success" if steps.best_epoch else "last (nothing evaluated)",
        "frames": len(steps.demos),
        "episodes": steps.demos.num_episodes,
        "cache": [{"path": str(c.path), "built": c.built} for c in caches] or None,
        "encoder_sha256": pconfig.encoder_sha256,
        "seconds": elapsed,
    }
    write_json(out / "summary.json", summary)
    return TrainResult(out, steps.last_dir, steps.best_dir, len(losses), losses, steps.best_success, caches, elapsed)


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
    head = head or CortexBenchConfig()
    aux = getattr(head, "aux_state", 0.0) > 0
    if aux and (oracle or demos.env_states is None):
        raise PixioError(
            f"head.aux_state={head.aux_state} predicts the object state, which encoder=oracle already reads"
            if oracle
            else f"head.aux_state={head.aux_state} predicts observation.environment_state, which {demos.root} does "
            "not hold: re-record it with pixio-robot collect environment_state=true"
        )
    config = PixioConfig(
        device=device.type,
        backbone=spec,
        encoder_sha256=weights_sha256(backbone),
        layer=backbone.block_indices(layer)[0],
        image_size=[image_size, image_size] if image_size else list(demos.image_shape),
        cameras=cameras,
        head=dataclasses.asdict(head),
        aux_state_index=_position_index(demos) if aux else [],
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


def _position_index(demos: Demonstrations) -> list[int]:
    """Where the object positions are in the recorded environment state (names *_x, *_y, *_z)."""
    names = demos.meta.get("environment_state_names") or []
    return [i for i, n in enumerate(names) if n.endswith(("_x", "_y", "_z"))]


def _env_state_dim(demos: Demonstrations) -> int:
    return 0 if demos.env_states is None else demos.env_states.shape[1]


def _schedule(cfg: TrainPolicyConfig, lr: float, total: int) -> WarmupCosine:
    """eai-vc and ACT train heads at a constant rate (the default); `cosine` decays it to 0 over
    the run (on the demo's pick_place it lowered the final loss and the success: README)."""
    if cfg.lr_schedule == "cosine":
        return WarmupCosine(lr, 0, total, min_lr=0.0)
    return WarmupCosine(lr, 0, 1, min_lr=lr)


def _check_options(cfg: TrainPolicyConfig) -> None:
    for name in ("epochs", "batch_size", "eval_episodes", "eval_workers"):
        if getattr(cfg, name) < 1:
            raise PixioError(f"{name}={getattr(cfg, name)}: use 1 or more")
    if cfg.test_episodes < 0:
        raise PixioError(f"test_episodes={cfg.test_episodes}: use 0 (no test) or a number of episodes")
    if cfg.batch_size < 2:
        raise PixioError(f"batch_size={cfg.batch_size}: BatchNorm needs at least 2")
    if cfg.eval_every < 0:
        raise PixioError(f"eval_every={cfg.eval_every}: use 0 (never) or a number of epochs")
    if cfg.cache_dtype not in ("float16", "float32"):
        raise PixioError(f"cache_dtype={cfg.cache_dtype!r}: use float16 or float32")
    if cfg.consecutive < 1:
        raise PixioError(f"consecutive={cfg.consecutive}: use 1 (shuffled frames) or a run length like 8")
    if cfg.lr_schedule not in ("constant", "cosine"):
        raise PixioError(f"lr_schedule={cfg.lr_schedule!r}: use constant or cosine")


def _check_out(out: Path, cfg: TrainPolicyConfig) -> bool:
    """True when resuming; refuses an occupied folder otherwise (nothing is touched)."""
    occupied = out.exists() and (not out.is_dir() or any(out.iterdir()))
    if not cfg.resume:
        if occupied:
            raise PixioError(f"out={out} is not empty: pass resume=true to continue that run, or choose another out=")
        return False
    if not list_checkpoints(out):
        if occupied:
            raise PixioError(
                f"out={out} has no checkpoint to resume from ({out / 'checkpoints'}): start a new run elsewhere"
            )
        return False  # nothing to resume: a fresh run
    return True


def _copy_checkpoint(src: Path, dst: Path) -> None:
    with atomic_dir(dst) as tmp:
        for f in src.iterdir():
            shutil.copy2(f, tmp / f.name)


def _duration(seconds: float | None) -> str:
    return "an unknown time (resumed from a checkpoint that kept none)" if seconds is None else f"{seconds:.0f}s"


def run(cfg: TrainPolicyConfig) -> int:
    result = train_policy(cfg)
    losses = result.losses
    best = "" if result.best_success is None else f", best validation success {result.best_success:.0%}"
    print(
        f"{result.out}: {result.epochs} epochs in {_duration(result.seconds)}, loss {losses[0]:.4f} -> {losses[-1]:.4f}"
        f"{best}; policy: {result.best} (evaluate: pixio-robot eval-policy policy={result.best} out=...)"
    )
    if result.test:
        low, high = result.test["ci95"]
        print(
            f"held-out test: {result.test['success_rate']:.0%} success on {result.test['episodes']} episodes "
            f"(95% CI {low:.0%}-{high:.0%}); {result.test['result']}"
        )
    return 0
