"""Frozen Pixio tokens of each view, computed once and cached on disk.

The head reads the last block's normed patch tokens (what MapAnything reads from its encoder).
The encoder is frozen, so a view's tokens depend only on its pixels, the resolution and the
encoder weights: they are cached per scene in one safetensors file under

    <cache>/<encoder sha256[:16]>/<H>x<W>-<dtype>/<key>.safetensors      (V, h, w, D) float16

where key hashes the scene's resolved path and its image files' names, sizes and times. A
retrained encoder, another resolution or changed images miss the cache instead of reading
stale tokens. The default cache is $PIXIO_ROBOT_CACHE/recon-tokens, else
~/.cache/pixio-robot/recon-tokens.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pixio_robot.atomic import atomic_path
from pixio_robot.encoder import PixioViT
from pixio_robot.extract import FeatureExtractor

from .data import SceneData


def default_cache_dir() -> Path:
    base = os.environ.get("PIXIO_ROBOT_CACHE") or Path.home() / ".cache" / "pixio-robot"
    return Path(base) / "recon-tokens"


class TokenCache:
    """`cache.tokens(scene)` -> (V, h, w, D) float32 patch tokens of a scene's views; with
    `taps` (block indices, for depth heads), (V, T, h, w, 2D): each tapped block's normed patch
    tokens with the mean normed class token beside them (the official depth heads' input)."""

    def __init__(
        self,
        encoder: PixioViT,
        encoder_sha256: str | None,
        size: tuple[int, int],
        root: str | os.PathLike | None = None,
        batch_size: int = 8,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        taps: list[int] | None = None,
    ):
        self.size = tuple(size)
        self.last_block = len(encoder.blocks) - 1
        self.taps = None if taps is None else encoder.block_indices(taps)
        self.batch_size = batch_size
        blocks = -1 if self.taps is None else self.taps
        self.extractor = FeatureExtractor(encoder, self.size, blocks, True, batch_size, device, dtype)
        dtype_name = str(dtype).removeprefix("torch.")
        kind = "" if self.taps is None else "-taps" + "-".join(map(str, self.taps))
        self.folder = None
        if encoder_sha256 and root is not None:
            self.folder = Path(root) / encoder_sha256[:16] / f"{self.size[0]}x{self.size[1]}-{dtype_name}{kind}"
        self.hits = self.misses = 0

    def encode(self, images: np.ndarray | list[np.ndarray]) -> torch.Tensor:
        """Tokens of uint8 (H, W, 3) images, no caching: (V, h, w, D) float32."""
        # The extractor pads every batch to its batch size: no padding work for a few views.
        self.extractor.batch_size = max(1, min(self.batch_size, len(images)))
        feats = self.extractor(list(images))
        if self.taps is None:
            return feats[f"patches.block{self.last_block}"]
        taps = []
        for b in self.taps:
            patches, cls = feats[f"patches.block{b}"], feats[f"cls.block{b}"].mean(1)
            taps.append(torch.cat([patches, cls[:, None, None].expand_as(patches)], dim=-1))
        return torch.stack(taps, dim=1)

    def tokens(self, scene: SceneData, mirrored: bool = False) -> torch.Tensor:
        """The scene's tokens; `mirrored`: those of its images flipped left-right (flip
        augmentation and test-time flip; cached beside the others)."""
        images = scene.images[:, :, ::-1].copy() if mirrored else scene.images
        if self.folder is None:
            return self.encode(images)
        ident = f"{scene.path.resolve()}|{scene.stamp}|{scene.num_views}" + ("|mirrored" if mirrored else "")
        key = hashlib.sha1(ident.encode()).hexdigest()[:24]
        path = self.folder / f"{key}.safetensors"
        if path.is_file():
            try:
                cached = load_file(str(path))["tokens"]
                if cached.shape[0] == scene.num_views:
                    self.hits += 1
                    return cached.float()
            except (SafetensorError, OSError, KeyError):
                pass  # unreadable entry (e.g. a full disk earlier): recompute and replace it
        tokens = self.encode(images)
        with atomic_path(path) as tmp:
            save_file({"tokens": tokens.half().contiguous()}, str(tmp), metadata={"scene": str(scene.path.resolve())})
        self.misses += 1
        return tokens.half().float()  # what a later cache hit returns, so runs do not depend on it
