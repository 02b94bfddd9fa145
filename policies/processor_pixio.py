"""LeRobot's processor pipelines for the pixio policy (found by LeRobot's factory by name).

The policy normalises state and actions itself, with the dataset statistics stored in its
weights, so its pipelines only add the batch dimension, move tensors to the device and back;
the normalisation steps see `IDENTITY` modes and pass values through.
"""

from __future__ import annotations

from typing import Any

import torch
from lerobot.processor import PolicyAction, PolicyProcessorPipeline, make_default_pre_post_processors

from .configuration_pixio import PixioConfig


def make_pixio_pre_post_processors(
    config: PixioConfig, dataset_stats: dict[str, dict[str, torch.Tensor]] | None = None
) -> tuple[
    PolicyProcessorPipeline[dict[str, Any], dict[str, Any]], PolicyProcessorPipeline[PolicyAction, PolicyAction]
]:
    return make_default_pre_post_processors(config, dataset_stats, normalizer_device=config.device)
