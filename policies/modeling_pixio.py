"""A behaviour-cloning policy on a frozen encoder, as a LeRobot `PreTrainedPolicy` ("pixio").

    policy = PixioPolicy.from_pretrained("runs/push/checkpoints/best")   # or policies.load_policy(...)
    policy.reset()
    action = policy.select_action({"observation.images.front": image, "observation.state": state})

A policy may read several cameras (`config.cameras`, e.g. front and wrist): each frame's
features are then joined across them (`join_views`) before the head sees them.

Parts: `backbone` (frozen: Pixio or a timm model, see `backbones.py`), `head` (trainable, see
`heads.py`) and the dataset's normalisation statistics (buffers: state and action mean/std).
Everything is in `model.safetensors`, so a saved policy needs no other file.

Two ways in:
- LeRobot's: `forward(batch)` -> (loss, info) on a batch of images (B, T, 3, H, W) in [0, 1],
  `observation.state` and `action` (B, k, A) with `action_is_pad`, as LeRobot's dataset gives
  them for this config's delta indices; `select_action(batch)` one step at a time.
- the feature cache's: `loss_from_features(features, state, actions, pad)`, where features
  were computed once by `encode` (what `policies.train` does).
At inference every frame is encoded once; the policy keeps the last `history` frames' features
and, for chunking heads, the temporal ensemble of its chunks. `reset()` clears both.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from lerobot.policies.act.modeling_act import ACTTemporalEnsembler
from lerobot.policies.pretrained import PreTrainedPolicy
from safetensors import SafetensorError
from torch import Tensor

from pixio_robot.errors import PixioError
from pixio_robot.extract import FeatureExtractor

from .backbones import ENV_STATE, build_backbone
from .configuration_pixio import PixioConfig
from .heads import head_inputs, make_head

MIN_STD = 1e-2  # a constant dimension (e.g. a gripper that never opens) must not blow up


class PixioPolicy(PreTrainedPolicy):
    config_class = PixioConfig
    name = "pixio"

    def __init__(self, config: PixioConfig, dataset_stats: dict | None = None, backbone=None, **kwargs):
        """`backbone`: the frozen encoder module, when already built (else from `config.backbone`
        with fresh weights, which a checkpoint's weights then replace)."""
        super().__init__(config)
        config.validate_features()
        self.backbone = backbone if backbone is not None else build_backbone(config.backbone)
        hc = config.head_config
        patch = self.backbone.patch_size
        h, w = config.image_size
        if h % patch or w % patch:
            raise PixioError(f"image_size={h}x{w} is not a multiple of the backbone's input stride {patch}")
        views = max(len(config.cameras), 1)  # the oracle reads no camera but one state per frame
        self.grid = (h // patch, views * (w // patch))  # the cameras' grids side by side
        self.inputs = head_inputs(hc)
        if config.oracle and self.inputs != ("global",):
            raise PixioError(
                f"encoder=oracle gives one state vector per frame, no patch grid: head={hc.name} needs one"
            )
        feature_dim = self.backbone.embed_dim * (views if "global" in self.inputs else 1)  # embeddings concatenated
        aux_dim = len(config.aux_state_index) if getattr(hc, "aux_state", 0.0) > 0 else 0
        self.head = make_head(hc, feature_dim, self.grid, config.state_dim, config.action_dim, aux_dim, views)
        sizes = (("state", config.state_dim), ("action", config.action_dim)) + ((("aux", aux_dim),) if aux_dim else ())
        for name, dim in sizes:
            self.register_buffer(f"{name}_mean", torch.zeros(dim))
            self.register_buffer(f"{name}_std", torch.ones(dim))
        if dataset_stats is not None:
            self.set_normalization(dataset_stats)
        self._extractors: dict[tuple, FeatureExtractor] = {}
        self.reset()

    # ---- normalisation ---------------------------------------------------------------------

    @torch.no_grad()
    def set_normalization(self, stats: dict) -> None:
        """Mean and std of `observation.state` and `action` from a dataset's stats (actions stay
        raw, mean 0 and std 1, for a head with `normalize_actions=False`)."""
        raw = not getattr(self.config.head_config, "normalize_actions", True)
        keys = (("state", "observation.state"), ("action", "action"))
        if getattr(self.head, "aux", None) is not None:
            keys += (("aux", ENV_STATE),)
        for name, key in keys:
            if name == "action" and raw:
                continue
            if key not in stats:
                raise PixioError(f"the dataset's stats have no {key!r}: cannot normalise")
            mean = torch.as_tensor(np.asarray(stats[key]["mean"]), dtype=torch.float32).reshape(-1)
            std = torch.as_tensor(np.asarray(stats[key]["std"]), dtype=torch.float32).reshape(-1)
            if name == "aux":
                mean, std = mean[self.config.aux_state_index], std[self.config.aux_state_index]
            getattr(self, f"{name}_mean").copy_(mean)
            getattr(self, f"{name}_std").copy_(std.clamp(min=MIN_STD))

    def normalize_state(self, state: Tensor) -> Tensor:
        return (state - self.state_mean) / self.state_std

    def normalize_action(self, action: Tensor) -> Tensor:
        return (action - self.action_mean) / self.action_std

    def unnormalize_action(self, action: Tensor) -> Tensor:
        return action * self.action_std + self.action_mean

    # ---- features --------------------------------------------------------------------------

    def extractor(self, batch_size: int) -> FeatureExtractor:
        device = self.state_mean.device
        key = (batch_size, str(device))
        if key not in self._extractors:
            self._extractors[key] = FeatureExtractor(
                self.backbone,
                tuple(self.config.image_size),
                [self.config.layer],
                patches="patches" in self.inputs,
                batch_size=batch_size,
                device=device,
            )
        return self._extractors[key]

    @torch.no_grad()
    def encode(self, images, batch_size: int | None = None) -> dict[str, Tensor]:
        """Frames -> {"global": (N, D), "patches": (N, h, w, D)} as the head reads them.

        images: (N, 3, H, W) float in [0, 1] or uint8 tensor, or (N, H, W, 3) uint8 array."""
        n = len(images)
        extractor = self.extractor(min(n, batch_size or self.config.encode_batch_size))
        parts: dict[str, list[Tensor]] = {k: [] for k in self.inputs}
        block = extractor.blocks[0]
        for _, feats in extractor.batches(images):
            for k in self.inputs:
                parts[k].append(feats["global" if k == "global" else f"patches.block{block}"])
        device = self.state_mean.device
        # .clone(): the extractor runs in inference mode, whose tensors autograd refuses to save
        return {k: torch.cat(v).to(device).clone() for k, v in parts.items()}

    def encode_views(self, batch: dict, batch_size: int | None = None) -> dict[str, Tensor]:
        """`encode` of every camera's frames in `batch` (keyed as `config.image_keys`), joined;
        for the oracle, the environment states in `batch` as they are."""
        if self.config.oracle:
            return {"global": torch.as_tensor(batch[ENV_STATE], device=self.state_mean.device).float()}
        return join_views([self.encode(batch[key], batch_size) for key in self.config.image_keys])

    # ---- training --------------------------------------------------------------------------

    def loss_from_features(
        self,
        features: dict[str, Tensor],
        state: Tensor,
        actions: Tensor,
        pad: Tensor | None = None,
        env_state: Tensor | None = None,
        frames: Tensor | None = None,
    ) -> Tensor:
        """features (B, T, ...), raw state (B, S), raw actions (B, k, A), pad (B, k) -> loss;
        with the head's `aux_state`, plus that weight times the MSE of the predicted (normalised)
        object positions against those in `env_state` (B, E) of the current frame. With `frames`
        (B, T) (heads with per-frame codes only, `frame_codes`), features are those of each
        distinct frame once (U, ...) and `frames` indexes them."""
        weight = getattr(self.config.head_config, "aux_state", 0.0)
        shared = {} if frames is None else {"frames": frames}
        if weight <= 0:
            pred = self.head(features, self.normalize_state(state), **shared)
            return self.head.loss(pred, self.normalize_action(actions), pad)
        if env_state is None:
            raise PixioError(f"head.aux_state={weight} trains on {ENV_STATE}, which this batch lacks")
        pred, aux = self.head(features, self.normalize_state(state), aux=True, **shared)
        target = (env_state[:, self.config.aux_state_index].float() - self.aux_mean) / self.aux_std
        return self.head.loss(pred, self.normalize_action(actions), pad) + weight * (aux - target).square().mean()

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        """LeRobot's training step: images are encoded by the frozen backbone on the fly."""
        features = self._batch_features(batch)
        state = batch["observation.state"]
        state = state[:, -1] if state.ndim == 3 else state
        actions = batch["action"]
        actions = actions[:, None] if actions.ndim == 2 else actions
        env_state = batch.get(ENV_STATE)
        env_state = env_state[:, -1] if env_state is not None and env_state.ndim == 3 else env_state
        loss = self.loss_from_features(features, state, actions, batch.get("action_is_pad"), env_state)
        return loss, {"loss": float(loss.detach())}

    def _batch_features(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        history = self.config.head_config.history
        frames = {}
        for key in [ENV_STATE] if self.config.oracle else self.config.image_keys:
            x = batch[key]
            frame_ndim = 1 if key == ENV_STATE else 3  # a state vector, or a (3, H, W) image
            if x.ndim == frame_ndim + 1:
                x = x[:, None]
            b, t = x.shape[:2]
            if t == 1 and history > 1:
                x = x.expand(-1, history, *x.shape[2:])
            elif t != history:
                raise PixioError(f"batch has {t} frames per sample; this policy's history is {history}")
            frames[key] = x.flatten(0, 1)
        return {k: v.unflatten(0, (b, history)) for k, v in self.encode_views(frames).items()}

    def get_optim_params(self):
        return self.head.parameters()

    def train(self, mode: bool = True) -> PixioPolicy:
        super().train(mode)
        self.backbone.eval()  # frozen: its BatchNorm statistics and dropout stay as they are
        return self

    # ---- inference -------------------------------------------------------------------------

    def reset(self) -> None:
        hc = self.config.head_config
        self._history: deque[dict[str, Tensor]] = deque(maxlen=hc.history)
        self._queue: deque[Tensor] = deque()
        coeff = getattr(hc, "temporal_ensemble_coeff", None)
        # LeRobot's own ACT ensembler: it follows the chunk's device, so CUDA evaluation works
        self._ensembler = (
            ACTTemporalEnsembler(coeff, hc.chunk_size) if coeff is not None and hc.chunk_size > 1 else None
        )

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict[str, Tensor], **kwargs) -> Tensor:
        """(B, k, A) actions for a batch with `history` frames per sample (or one, repeated)."""
        state = batch["observation.state"]
        state = state[:, -1] if state.ndim == 3 else state
        return self._chunk(self._batch_features(batch), state)

    def _chunk(self, features: dict[str, Tensor], state: Tensor) -> Tensor:
        return self.unnormalize_action(self.head(features, self.normalize_state(state.float())))

    @torch.no_grad()
    def select_action(self, batch: dict[str, Tensor], **kwargs) -> Tensor:
        """One step: (B, A) actions for one observation per sample (image (B, 3, H, W) in [0, 1]
        or uint8, or (B, H, W, 3) uint8; state (B, S)). Call `eval()` first (LeRobot does)."""
        state = torch.as_tensor(batch["observation.state"], device=self.state_mean.device)
        state = state[None] if state.ndim == 1 else state
        frame = self.encode_views(batch)
        self._history.append(frame)
        while len(self._history) < self._history.maxlen:  # episode start: repeat the first frame
            self._history.appendleft(frame)
        if self._queue:
            return self._queue.popleft()
        features = {k: torch.stack([f[k] for f in self._history], dim=1) for k in self.inputs}
        chunk = self._chunk(features, state)
        if chunk.shape[1] == 1:
            return chunk[:, 0]
        if self._ensembler is not None:
            return self._ensembler.update(chunk)
        steps = self.config.head_config.n_action_steps
        self._queue.extend(chunk[:, i] for i in range(1, steps))
        return chunk[:, 0]


def join_views(views: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """One frame's features from several cameras' (same frames, same order), as float32: global
    embeddings concatenated (..., V*D), patch grids side by side (..., h, V*w, D). Each view is
    copied once into the joined tensor, converting on the way: train-policy's cached features
    arrive as float16, and converting then concatenating read and wrote them twice (the data
    path was a third of a front + wrist training step)."""
    joined = {}
    for key in views[0]:
        parts = [view[key] for view in views]
        if len(parts) == 1:
            joined[key] = parts[0].float()
            continue
        dim = -1 if key == "global" else -2
        shape = list(parts[0].shape)
        shape[dim] = sum(part.shape[dim] for part in parts)
        out = parts[0].new_empty(shape, dtype=torch.float32)
        start = 0
        for part in parts:
            out.narrow(dim, start, part.shape[dim]).copy_(part)
            start += part.shape[dim]
        joined[key] = out
    return joined


# ---- files ----------------------------------------------------------------------------------


def save_policy(
    policy: PixioPolicy, folder: str | Path, extra: dict[str, Callable[[Path], None]] | None = None
) -> Path:
    """The policy as a LeRobot pretrained folder (config.json, model.safetensors and LeRobot's
    processor files), written whole: into a temporary folder renamed into place. `extra` maps
    file names to writers of more files that must change together with it (training state)."""
    from pixio_robot.atomic import atomic_dir

    from .processor_pixio import make_pixio_pre_post_processors

    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        policy.save_pretrained(tmp)
        for pipeline in make_pixio_pre_post_processors(policy.config):
            pipeline.save_pretrained(tmp)
        for name, write in (extra or {}).items():
            write(tmp / name)
    return folder


def load_policy_config(folder: str | Path, device: str = "cpu") -> PixioConfig:
    """The config of a saved policy (cheap: no weights are read), checked."""
    folder = Path(folder)
    config_file = folder / "config.json"
    if not (config_file.is_file() and (folder / "model.safetensors").is_file()):
        raise PixioError(
            f"policy={folder}: not a saved policy (needs config.json and model.safetensors): pass a checkpoint "
            "folder such as runs/<name>/checkpoints/best"
        )
    try:
        saved = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise PixioError(f"{config_file}: unreadable ({e})") from None
    if saved.get("type") != "pixio":
        raise PixioError(f"policy={folder} is a LeRobot {saved.get('type')!r} policy, not a pixio one")
    if "camera" in saved:
        raise PixioError(
            f"policy={folder} was saved by an earlier version (one `camera` field, not `cameras`): train it again"
        )
    return PixioConfig.from_pretrained(folder, cli_overrides=[f"--device={device}"])


def load_policy(folder: str | Path, device: str = "cpu") -> PixioPolicy:
    """A saved policy, checked: every weight present, in eval mode."""
    config = load_policy_config(folder, device)
    with contextlib.redirect_stdout(io.StringIO()):  # LeRobot prints "Loading weights from local directory"
        try:
            policy = PixioPolicy.from_pretrained(folder, config=config, strict=True)
        except SafetensorError as e:
            raise PixioError(
                f"policy={folder}: model.safetensors is truncated or corrupt ({e}): train it again or use "
                "another checkpoint (checkpoints/best, checkpoints/last)"
            ) from None
        except RuntimeError as e:
            raise PixioError(f"policy={folder}: weights do not fit its config ({str(e).splitlines()[0]})") from None
    return policy
