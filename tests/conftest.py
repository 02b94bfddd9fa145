"""Shared fixtures: small models and data made on the spot (nothing is downloaded)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")
torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: longer than a few seconds; left out of the default run")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def stack_scenes(tmp_path_factory):
    """Captured `stack` scenes at 64x64, 4 views each: train/ (4 scenes) and test/ (2, seeds from
    1000), for the recon and depth heads; runs and token caches of both go beside them."""
    from pixio_robot.cli import main

    root = tmp_path_factory.mktemp("scenes")
    capture = ["capture", "env=stack", "views=4", "image_size=64", "expert_steps=0", "progress=false"]
    assert main([*capture, "scenes=4", f"out={root / 'train'}"]) == 0
    assert main([*capture, "scenes=2", "seed=1000", f"out={root / 'test'}"]) == 0
    return root


@pytest.fixture(scope="session")
def hf_pixio():
    """A small transformers PixioModel with random (non-trivial) weights, the reference."""
    from transformers import PixioConfig, PixioModel

    config = PixioConfig(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        mlp_ratio=4,
        image_size=256,
        patch_size=16,
        n_cls_tokens=8,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = PixioModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # LayerNorms away from identity, tokens away from zero
            p.add_(torch.randn_like(p) * 0.05)
    return model
