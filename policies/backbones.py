"""Frozen visual backbones behind one interface: Pixio, or any timm model for baselines.

Every backbone speaks the Pixio features API that `pixio_robot.extract.FeatureExtractor`
drives: `features(x, blocks, patches=...)` -> list of `BlockTokens` whose `.cls` (B, n, D)
averages to the global embedding and whose `.patches` (B, h, w, D) are the spatial tokens;
`block_indices`, `patch_size` (the input-size multiple) and `embed_dim`. `PixioViT` has it
natively; `TimmBackbone` adapts any timm model (CNN feature maps or ViT tokens).

Encoder strings, as `train-policy encoder=` takes them:

- a Pixio checkpoint (`.pth`, `.safetensors`, transformers folder) or a size name (`vits16`:
  random initialisation);
- `timm:<model>` (e.g. `timm:resnet18`): random initialisation, or its own weights from a file
  (`encoder_weights=`); nothing is ever downloaded;
- `oracle`: no image at all; each frame's embedding is the environment's privileged object
  state (`observation.environment_state`, recorded by `collect environment_state=true`). Through
  the same head, normalisation and rollouts it is the upper bound a perfect encoder would give.

`init=random` keeps a checkpoint's architecture and draws new weights (the random-init
baseline of a pretrained encoder). Random weights come from the seed, so the same seed gives
the same encoder, and the same feature cache.

A backbone is described by a JSON-able `spec` (kind, name, architecture), which rebuilds the
architecture without weights (the policy checkpoint holds the weights), and identified by
`weights_sha256`, the SHA-256 of its weights (names, dtypes, shapes, bytes): the same weights
give the same hash whichever file layout they were read from.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from pixio_robot.encoder import BlockTokens, PixioViT
from pixio_robot.errors import PixioError

TIMM_PREFIX = "timm:"
ORACLE = "oracle"
ENV_STATE = "observation.environment_state"
_CLASSIFIER_KEYS = {f"{m}.{p}" for m in ("fc", "head", "head.fc", "classifier") for p in ("weight", "bias")}


class TimmBackbone(nn.Module):
    """Any timm model as a frozen feature extractor with the Pixio features API.

    CNNs: the last feature map is the patch grid and its average the global embedding. ViTs:
    the prefix tokens (class/register) are `cls`, the rest the patch grid."""

    def __init__(self, model_name: str, **kwargs):
        super().__init__()
        import timm

        try:
            self.model = timm.create_model(model_name, pretrained=False, num_classes=0, **kwargs)
        except RuntimeError as e:  # timm's "Unknown model"
            raise PixioError(f"timm has no model {model_name!r} ({e}): see timm.list_models()") from None
        self.model_name = model_name
        self.kwargs = dict(kwargs)
        self.embed_dim = int(self.model.num_features)
        self.n_prefix = int(getattr(self.model, "num_prefix_tokens", 0))
        if hasattr(self.model, "patch_embed"):
            self.patch_size = int(self.model.patch_embed.patch_size[0])
        else:
            self.patch_size = int(self.model.feature_info[-1]["reduction"])

    @property
    def config(self) -> dict:
        return {"model": self.model_name, "kwargs": self.kwargs}

    def block_indices(self, blocks: int | Sequence[int]) -> list[int]:
        blocks = [blocks] if isinstance(blocks, int) else list(blocks)
        if blocks != [-1]:
            raise PixioError(f"layer={blocks}: timm backbones give their final features only: use layer=-1")
        return [-1]

    def features(self, x: torch.Tensor, blocks=-1, *, patches: bool = True, **_) -> list[BlockTokens]:
        self.block_indices(blocks)
        f = self.model.forward_features(x)
        if f.ndim == 4:  # CNN: (B, C, h, w)
            grid = f.permute(0, 2, 3, 1)
            cls = self.model.forward_head(f, pre_logits=True)[:, None]
        else:  # ViT tokens: (B, n_prefix + h*w, D)
            h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
            grid = f[:, self.n_prefix :].unflatten(1, (h, w))
            cls = f[:, : self.n_prefix] if self.n_prefix else self.model.forward_head(f, pre_logits=True)[:, None]
        return [BlockTokens(block=-1, cls=cls, patches=grid if patches else None)]


class OracleState(nn.Module):
    """The `oracle` backbone: no weights and no image; the policy reads `ENV_STATE` as the
    global embedding of each frame (see `PixioPolicy.encode_views`)."""

    patch_size = 1

    def __init__(self, dim: int):
        super().__init__()
        self.embed_dim = int(dim)

    @property
    def config(self) -> dict:
        return {"dim": self.embed_dim}

    def block_indices(self, blocks: int | Sequence[int]) -> list[int]:
        return [-1]


def is_timm(encoder: str) -> bool:
    return str(encoder).startswith(TIMM_PREFIX)


def load_backbone(
    encoder: str, init: str = "pretrained", weights: str | None = None, seed: int = 0, state_dim: int | None = None
) -> tuple[nn.Module, dict]:
    """(frozen backbone in eval mode, spec) for an encoder string (see the module doc);
    `state_dim`: the size of the environment state, which `oracle` reads."""
    import pixio_robot

    if init not in ("pretrained", "random"):
        raise PixioError(f"encoder_init={init!r}: use pretrained (the weights given) or random")
    if encoder == ORACLE:
        if not state_dim:
            raise PixioError(
                "encoder=oracle reads the environment state, which the dataset does not hold: record it "
                "with pixio-robot collect environment_state=true"
            )
        return OracleState(state_dim), {"kind": ORACLE, "name": ORACLE, "config": {"dim": int(state_dim)}}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if is_timm(encoder):
            name = encoder[len(TIMM_PREFIX) :]
            model: nn.Module = TimmBackbone(name)
            if weights and init == "pretrained":
                _load_timm_weights(model.model, Path(weights))
            spec = {"kind": "timm", "name": name, "config": model.config}
        else:
            if weights:
                raise PixioError("encoder_weights= is for timm:<model> encoders: pass a Pixio checkpoint as encoder=")
            model = pixio_robot.load_encoder(encoder)
            if init == "random":
                model = PixioViT(**model.config)  # same architecture, weights from the seed
            name = Path(encoder).stem if os.path.exists(encoder) else encoder
            spec = {"kind": "pixio", "name": name, "config": model.config}
    return freeze(model), spec


def build_backbone(spec: dict) -> nn.Module:
    """The architecture of a spec with fresh weights (a checkpoint's weights go on top)."""
    kind = spec.get("kind")
    if kind == "pixio":
        return freeze(PixioViT(**spec["config"]))
    if kind == "timm":
        return freeze(TimmBackbone(spec["config"]["model"], **spec["config"].get("kwargs", {})))
    if kind == ORACLE:
        return OracleState(spec["config"]["dim"])
    raise PixioError(f"unknown backbone kind {kind!r} in the policy config: expected pixio, timm or oracle")


def freeze(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def weights_sha256(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _load_timm_weights(model: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise PixioError(f"encoder_weights={path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise PixioError(f"{path}: not a plain state dict of tensors ({str(e).splitlines()[0]})") from None
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    state = {k.removeprefix("module."): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    unexpected = [k for k in unexpected if k not in _CLASSIFIER_KEYS]  # a classifier the backbone drops
    if missing or unexpected:
        raise PixioError(
            f"{path}: does not fit this timm model ({len(missing)} weights missing, e.g. {missing[:2]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:2]})"
        )
