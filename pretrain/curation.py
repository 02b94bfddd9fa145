"""Loss-based self-curation (Pixio's data curation, docs/DESIGN.md section 3).

`pixio-robot curate` (`curate.py`) runs a trained pre-training checkpoint over a dataset and
stores, per image, its reconstruction loss and its colour entropy. Training with `data.curation=FILE`
then accepts each image, each time it comes up, with probability equal to its stored loss
(clipped to [0, 1]): hard-to-reconstruct images are seen more often, trivial ones rarely.
`data.min_color_entropy` first drops images whose colours are too uniform (text, blank
frames) and `data.min_image_side` small ones. Images missing from the file are never drawn.

The file is JSON: {"format": "pixio-robot/curation", "checkpoint": ..., "image_size": ...,
"images": {key: {"loss", "color_entropy", "height", "width"}}}, keys as the data module names
images (folder-relative paths, `dataset/camera/frame` for LeRobot, `shard.tar/key` for shards).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pixio_robot.errors import PixioError

FORMAT = "pixio-robot/curation"


def color_entropy(image: np.ndarray, levels: int = 8) -> float:
    """Entropy in bits of the image's colour histogram with `levels` steps per channel
    (0 for a flat image, at most 3*log2(levels) = 9 bits)."""
    q = (np.asarray(image, dtype=np.uint8) // (256 // levels)).reshape(-1, 3).astype(np.int64)
    counts = np.bincount((q[:, 0] * levels + q[:, 1]) * levels + q[:, 2], minlength=levels**3)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


class Curation:
    """Acceptance probabilities per image key, from a `pixio-robot curate` file."""

    def __init__(
        self, images: dict[str, dict], min_color_entropy: float | None = None, min_image_side: int | None = None
    ):
        self.p: dict[str, float] = {}
        for key, info in images.items():
            if min_color_entropy is not None and info.get("color_entropy", 0.0) < min_color_entropy:
                continue
            if min_image_side is not None and min(info.get("height", 0), info.get("width", 0)) < min_image_side:
                continue
            self.p[key] = float(np.clip(info["loss"], 0.0, 1.0))

    @classmethod
    def load(
        cls, path: str | Path, min_color_entropy: float | None = None, min_image_side: int | None = None
    ) -> Curation:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as e:
            raise PixioError(f"data.curation={path}: no such file: make it with `pixio-robot curate`") from e
        except (OSError, ValueError) as e:
            raise PixioError(f"data.curation={path}: not a readable JSON file ({e.__class__.__name__})") from e
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("images"), dict):
            raise PixioError(f"data.curation={path}: not a curation file made by `pixio-robot curate`")
        return cls(data["images"], min_color_entropy, min_image_side)

    def probabilities(self, keys: list[str]) -> np.ndarray:
        p = np.array([self.p.get(k, 0.0) for k in keys], dtype=np.float64)
        if not (p > 0).any():
            raise PixioError(
                "curation accepts no image of data.sources: the curation file names other images, or all "
                "losses are 0 / below min_color_entropy"
            )
        return p

    def accept(self, key: str, rng: np.random.Generator) -> bool:
        return rng.random() < self.p.get(key, 0.0)


# ---- `pixio-robot curate` -------------------------------------------------------------------
