"""Shared by tests/test_policies_*.py: one small recorded dataset per test session."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pixio_robot.cli import main

IMAGE_SIZE = 64
EPISODES = 4


def recorded_push(tmp_path_factory) -> Path:
    """A push dataset (front camera, 64 px, 4 expert episodes), recorded once per session."""
    root = tmp_path_factory.getbasetemp() / "policies_data" / "push"
    if not (root / "meta/pixio_env.json").exists():
        args = [
            "collect",
            "env=push",
            f"image_size={IMAGE_SIZE}",
            f"episodes={EPISODES}",
            f"out={root}",
            "progress=false",
        ]
        assert main(args) == 0
    return root


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root with its content hash (to show a failed command changed nothing)."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def train_args(dataset: Path, out: Path, *extra: str) -> list[str]:
    return ["train-policy", f"dataset={dataset}", "encoder=vitn16", f"out={out}", "progress=false", *extra]
