"""The policy heads by name: their configs (torch-free) and, on demand, their modules.

A head maps frozen features of the last `history` frames plus the normalised state to
`chunk_size` normalised actions: `head(features, state) -> (B, k, A)`, with `features` holding
"global" (B, T, D) and/or "patches" (B, T, h, w, D) as its `inputs` say, and
`head.loss(pred, target, pad)`.
"""

from __future__ import annotations

import dataclasses
import importlib
import math

from pixio_robot.errors import PixioError

from .configuration_chunking import ChunkingConfig
from .configuration_cortexbench import CortexBenchConfig
from .configuration_keypoints import KeypointsConfig
from .configuration_spatial import SpatialConfig

# The one registry: name -> (config class, "module:class" of the head, imported on demand).
HEADS: dict[str, tuple[type, str]] = {
    "cortexbench": (CortexBenchConfig, "policies.modeling_cortexbench:CortexBenchHead"),
    "keypoints": (KeypointsConfig, "policies.modeling_keypoints:KeypointsHead"),
    "spatial": (SpatialConfig, "policies.modeling_spatial:SpatialHead"),
    "chunking": (ChunkingConfig, "policies.modeling_chunking:ChunkingHead"),
}
HEAD_CONFIGS: dict[str, type] = {name: config for name, (config, _) in HEADS.items()}
# Options added after FLARE fusion: a head saved before it lacks them too.
_LATER_OPTIONS = {
    "fusion",
    "last_layer_scale",
    "normalize_actions",
    "values",
    "temporal_ensemble_coeff",
    "n_action_steps",
    "aux_state",
    "per_view",
    "temperature",
}
HeadConfig = CortexBenchConfig | KeypointsConfig | SpatialConfig | ChunkingConfig


def head_config(value: dict | HeadConfig) -> HeadConfig:
    """A head config from its dict form (as saved in a policy's config.json), checked."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    name = value.get("name")
    if name not in HEAD_CONFIGS:
        raise PixioError(f"unknown head {name!r}: choose one of {', '.join(HEAD_CONFIGS)}")
    cls = HEAD_CONFIGS[name]
    known = {f.name for f in dataclasses.fields(cls)}
    complete = set(value) >= known - _LATER_OPTIONS  # a head saved in a policy's config.json
    if "per_view" in known and "per_view" not in value and complete:
        # A keypoint head saved before per-camera maps: one set of maps shared by the cameras, at
        # an initial temperature of 1, as it was trained.
        value = {"per_view": False, "temperature": 1.0, **value}
    if "fusion" in known and "fusion" not in value and complete:
        # A complete head saved before FLARE fusion existed (every other option present): those
        # heads stacked the frames and must keep doing so to give the actions they were trained for.
        value = {**value, "fusion": "stack", "last_layer_scale": 1.0}
    unknown = sorted(set(value) - known)
    if unknown:
        raise PixioError(f"head {name} has no option {unknown[0]!r}: options are {', '.join(sorted(known))}")
    config = cls(**value)
    if config.history < 1 or config.chunk_size < 1:
        raise PixioError(f"head {name}: history and chunk_size must be at least 1")
    if getattr(config, "fusion", "flare") not in ("flare", "stack"):
        raise PixioError(f"head.fusion={config.fusion!r}: use flare or stack")
    aux = getattr(config, "aux_state", 0.0)
    if not (aux >= 0 and math.isfinite(aux)):
        raise PixioError(f"head.aux_state={aux}: give a loss weight >= 0 (0: no auxiliary state loss)")
    temperature = getattr(config, "temperature", 1.0)
    if not (temperature > 0 and math.isfinite(temperature)):
        raise PixioError(f"head.temperature={temperature}: give an initial softmax temperature > 0 (e.g. 0.1)")
    if getattr(config, "n_action_steps", 1) > config.chunk_size:
        raise PixioError(f"head {name}: n_action_steps={config.n_action_steps} exceeds chunk_size={config.chunk_size}")
    return config


def make_head(
    config: HeadConfig,
    feature_dim: int,
    grid: tuple[int, int],
    state_dim: int,
    action_dim: int,
    aux_dim: int = 0,
    views: int = 1,
):
    """The head module; `aux_dim` > 0 adds the read-out of `aux_state` (the object state's size);
    `views`: how many cameras' grids lie side by side in `grid` (h, views * w)."""
    module, _, cls = HEADS[config.name][1].partition(":")
    extra = {"aux_dim": aux_dim} if aux_dim else {}
    return getattr(importlib.import_module(module), cls)(
        config, feature_dim, grid, state_dim, action_dim, views=views, **extra
    )


def head_inputs(config: HeadConfig) -> tuple[str, ...]:
    """Which features a head reads, without building it."""
    return ("global",) if config.name == "cortexbench" else ("patches",)
