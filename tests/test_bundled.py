"""Bundled weights: found by name, checked against the SHA-256 recorded in the package."""

import shutil

import pytest
import torch

import pixio_robot
from pixio_robot import bundled
from pixio_robot.checkpoints import sha256_file
from pixio_robot.errors import PixioError


def test_every_bundled_file_matches_its_recorded_hash_and_the_card():
    card = (bundled.WEIGHTS_DIR / "MODEL_CARD.md").read_text()
    for name, entry in bundled.BUNDLED.items():
        path = bundled.bundled_path(name)
        assert sha256_file(path) == entry.sha256
        assert entry.sha256 in card and f"`{name}`" in card
    total = sum(p.stat().st_size for p in bundled.WEIGHTS_DIR.glob("*.safetensors"))
    assert total <= 30 * 2**20  # the repository's budget for weights


def test_bundled_encoder_loads_by_name():
    encoder = pixio_robot.load_encoder("sim_vitn16")
    assert encoder.n_cls_tokens == 8 and encoder.embed_dim == 128
    with torch.no_grad():
        assert encoder.global_embedding(torch.zeros(1, 3, 128, 128)).shape == (1, 128)


def test_changed_or_missing_bundled_file_is_refused(tmp_path, monkeypatch):
    shutil.copy(bundled.WEIGHTS_DIR / "sim_vitn16.safetensors", tmp_path)
    monkeypatch.setattr(bundled, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(bundled, "_verified", {})
    with open(tmp_path / "sim_vitn16.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(PixioError, match="SHA-256 .* is not the .* recorded"):
        pixio_robot.load_encoder("sim_vitn16")
    with pytest.raises(PixioError, match="are missing"):
        bundled.bundled_path("recon_sim_vitn16")


def test_demo_defaults_are_heads_trained_on_the_default_encoder():
    # The demo's policy, reconstruction and depth stages must all read the same frozen encoder:
    # a head trained on another encoder's tokens would run, and silently reconstruct garbage.
    import json

    from safetensors import safe_open

    from demo.commands import DemoConfig
    from policies.commands import ProbeConfig

    cfg = DemoConfig()
    assert cfg.encoder == ProbeConfig().encoder == "sim_vitn16_v2"
    for head in (cfg.recon_head, cfg.depth_head):
        with safe_open(str(bundled.bundled_path(head)), "pt") as f:
            recorded = json.loads(f.metadata()["encoder"])
        assert recorded["sha256"] == bundled.BUNDLED[cfg.encoder].sha256, head
