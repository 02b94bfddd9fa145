"""Configuration of a Pixio behaviour-cloning policy, a LeRobot `PreTrainedConfig` ("pixio").

It describes the whole policy: the frozen backbone (architecture spec and weights hash; the
weights live in the policy's `model.safetensors`), which block and image size and cameras it
reads (one or several: see `cameras`), the head (its config as a dict, see `heads.py`), and
the environment it was trained for. LeRobot's fields (`input_features`, `output_features`,
`n_obs_steps`, `device`, ...) are filled in from those, so LeRobot's factory and
training/evaluation scripts can drive it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from lerobot.configs import NormalizationMode, PreTrainedConfig
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.optim import AdamWConfig

from pixio_robot.errors import PixioError

from .heads import HeadConfig, head_config


@PreTrainedConfig.register_subclass("pixio")
@dataclass
class PixioConfig(PreTrainedConfig):
    backbone: dict[str, Any] = field(default_factory=lambda: {"kind": "pixio", "name": "vits16", "config": {}})
    encoder_sha256: str = ""
    layer: int = -1  # block whose tokens the head reads (normalised index for Pixio, -1 for timm)
    image_size: list[int] = field(default_factory=lambda: [128, 128])  # encoder input (H, W)
    # Cameras the head reads. Several are joined per frame: global embeddings concatenated, patch
    # grids side by side (h x V*w), so every head reads them without knowing there are several.
    # Empty for the `oracle` backbone, which reads observation.environment_state instead.
    cameras: list[str] = field(default_factory=lambda: ["front"])
    head: dict[str, Any] = field(default_factory=lambda: {"name": "cortexbench"})
    env: dict[str, Any] | None = None  # envs.EnvSpec.to_dict() of the environment trained for
    dataset: str | None = None
    encode_batch_size: int = 64
    # entries of observation.environment_state that the head's `aux_state` read-out predicts: the
    # object positions (a quaternion's sign flips make it a poor regression target)
    aux_state_index: list[int] = field(default_factory=list)
    # Normalisation happens inside the policy (buffers from the dataset's stats), so LeRobot's
    # processors must pass values through unchanged.
    normalization_mapping: dict[str, NormalizationMode] = field(
        default_factory=lambda: {
            "VISUAL": NormalizationMode.IDENTITY,
            "STATE": NormalizationMode.IDENTITY,
            "ACTION": NormalizationMode.IDENTITY,
        }
    )

    def __post_init__(self):
        super().__post_init__()
        self.head = dataclasses.asdict(head_config(self.head))  # checked, defaults filled in
        self.n_obs_steps = self.head_config.history

    @property
    def head_config(self) -> HeadConfig:
        return head_config(self.head)

    @property
    def image_keys(self) -> list[str]:
        return [f"observation.images.{camera}" for camera in self.cameras]

    @property
    def oracle(self) -> bool:
        """True for the `oracle` backbone: the environment state stands in for images."""
        return self.backbone.get("kind") == "oracle"

    @staticmethod
    def features_for(
        cameras: list[str], image_hw: tuple[int, int], state_dim: int, action_dim: int, env_state_dim: int = 0
    ) -> tuple[dict, dict]:
        """LeRobot's (input_features, output_features) for the cameras (or, with `env_state_dim`,
        the environment state), state and action."""
        inputs = {f"observation.images.{c}": PolicyFeature(FeatureType.VISUAL, (3, *image_hw)) for c in cameras}
        if env_state_dim:
            inputs["observation.environment_state"] = PolicyFeature(FeatureType.ENV, (env_state_dim,))
        inputs["observation.state"] = PolicyFeature(FeatureType.STATE, (state_dim,))
        return inputs, {"action": PolicyFeature(FeatureType.ACTION, (action_dim,))}

    @property
    def state_dim(self) -> int:
        return int(self.input_features["observation.state"].shape[0])

    @property
    def action_dim(self) -> int:
        return int(self.output_features["action"].shape[0])

    @property
    def observation_delta_indices(self) -> list[int]:
        return list(range(1 - self.head_config.history, 1))

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(self.head_config.chunk_size))

    @property
    def reward_delta_indices(self) -> None:
        return None

    def get_optimizer_preset(self) -> AdamWConfig:
        hc = self.head_config
        return AdamWConfig(lr=hc.lr, weight_decay=hc.weight_decay, grad_clip_norm=10.0)

    def get_scheduler_preset(self) -> None:
        return None

    def validate_features(self) -> None:
        if self.oracle:
            if self.cameras or "observation.environment_state" not in (self.input_features or {}):
                raise PixioError("an oracle policy reads observation.environment_state and no camera")
        elif not self.cameras or len(set(self.cameras)) != len(self.cameras):
            raise PixioError(f"cameras={self.cameras}: name one or more different cameras")
        for camera, key in zip(self.cameras, self.image_keys, strict=True):
            if key not in (self.input_features or {}):
                raise PixioError(f"the policy reads camera {camera!r} but its inputs have no {key}")
        if "observation.state" not in self.input_features or "action" not in (self.output_features or {}):
            raise PixioError("the policy needs observation.state among its inputs and action among its outputs")
