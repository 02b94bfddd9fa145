"""Image preprocessing for Pixio: anything image-like in, a normalised (B, 3, H, W) batch out.

Conventions: numpy arrays and PIL images are channels-last (H, W, 3), uint8 in [0, 255] or
float in [0, 1]; torch tensors are channels-first (3, H, W) or (B, 3, H, W), float in [0, 1]
or uint8. Images are resized (bicubic, antialiased) so both sides are multiples of the patch
size, then normalised with the ImageNet mean and std, as the official evaluation does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .encoder import IMAGENET_MEAN, IMAGENET_STD
from .errors import PixioError

ImageLike = np.ndarray | torch.Tensor | Image.Image


class Preprocess:
    """`Preprocess(size=256)(images)` -> float32 (B, 3, size, size), ImageNet-normalised.

    size: an int (square), (height, width), or None to keep each image's size rounded to the
    nearest multiple of `patch_size`. Explicit sizes must be multiples of `patch_size`.
    """

    def __init__(
        self,
        size: int | Sequence[int] | None = 256,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        patch_size: int = 16,
    ):
        if size is not None:
            size = (int(size), int(size)) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
            if len(size) != 2 or min(size) < patch_size or size[0] % patch_size or size[1] % patch_size:
                raise PixioError(
                    f"image size {size} is not a pair of positive multiples of the patch size {patch_size}: "
                    f"use e.g. 256 or (224, 320)"
                )
        self.size = size
        self.patch_size = patch_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def __call__(self, images: ImageLike | Sequence[ImageLike], device: str | torch.device = "cpu") -> torch.Tensor:
        batch = [self.resize(im.to(device)) for im in to_float_images(images)]
        shapes = {tuple(b.shape[-2:]) for b in batch}
        if len(shapes) > 1:
            raise PixioError(
                f"images of different sizes {sorted(shapes)} cannot form one batch: give Preprocess a size"
            )
        x = torch.cat(batch)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        if self.size is not None:
            return self.size
        p = self.patch_size
        return max(p, int(height / p + 0.5) * p), max(p, int(width / p + 0.5) * p)

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        size = self.target_size(*x.shape[-2:])
        if tuple(x.shape[-2:]) == size:
            return x
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
        return x.clamp_(0.0, 1.0)

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised batch -> float images in [0, 1] (for viewing)."""
        return (x * self.std.to(x.device) + self.mean.to(x.device)).clamp(0, 1)


def to_float_images(images: ImageLike | Sequence[ImageLike]) -> list[torch.Tensor]:
    """Split any accepted input into float (N, 3, H, W) tensors in [0, 1], checked."""
    if isinstance(images, (np.ndarray, torch.Tensor, Image.Image)):
        items = [images]
    elif isinstance(images, Sequence) and len(images) > 0:
        items = list(images)
    else:
        raise PixioError(f"expected an image, a batch or a list of images, got {type(images).__name__}")
    return [_one(im) for im in items]


def _one(im: ImageLike) -> torch.Tensor:
    if isinstance(im, Image.Image):
        if im.mode not in ("RGB", "RGBA", "L", "P", "CMYK", "I;16", "I", "F"):
            raise PixioError(f"PIL image mode {im.mode!r} is not an image Pixio can read: convert('RGB') it")
        im = np.asarray(im.convert("RGB"))
    if isinstance(im, np.ndarray):
        if im.ndim not in (3, 4) or im.shape[-1] != 3:
            raise PixioError(
                f"numpy images must be (H, W, 3) or (B, H, W, 3) RGB, got shape {im.shape}: "
                "wrong channel count or layout (drop alpha with img[..., :3], repeat grey to 3 channels)"
            )
        t = torch.from_numpy(np.array(im, copy=not im.flags.writeable or None))
        t = t.permute(2, 0, 1)[None] if t.ndim == 3 else t.permute(0, 3, 1, 2)
    elif isinstance(im, torch.Tensor):
        t = im[None] if im.ndim == 3 else im
        if t.ndim != 4 or t.shape[1] != 3:
            hint = " (it looks channels-last: permute to (B, 3, H, W))" if t.ndim == 4 and t.shape[-1] == 3 else ""
            raise PixioError(f"torch images must be (3, H, W) or (B, 3, H, W), got shape {tuple(im.shape)}{hint}")
    else:
        raise PixioError(f"cannot read an image from a {type(im).__name__}: pass numpy, PIL or torch images")
    if t.dtype == torch.uint8:
        return t.float().div_(255.0)
    if not t.is_floating_point():
        raise PixioError(f"images must be uint8 or float, got {t.dtype}")
    t = t.float()
    if not torch.isfinite(t).all():
        raise PixioError("the image contains NaN or infinite values: check how it was produced")
    lo, hi = t.min().item(), t.max().item()
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise PixioError(
            f"float images must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]: divide by 255, or pass "
            "uint8 (already-normalised batches go to the encoder directly, not through Preprocess)"
        )
    return t
