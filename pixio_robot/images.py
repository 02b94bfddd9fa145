"""Image files: finding and reading them, and writing PNGs and labelled grids of images."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from .atomic import write_bytes
from .errors import PixioError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def list_images(sources: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Image files named directly or found (recursively) under folders, in a stable order."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    found: list[Path] = []
    for src in map(Path, sources):
        if src.is_dir():
            inside = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not inside:
                raise PixioError(f"{src}: no images ({'/'.join(IMAGE_SUFFIXES)}) in this folder or below it")
            found += inside
        elif src.is_file():
            found.append(src)
        else:
            raise PixioError(f"{src}: no such file or folder")
    if not found:
        raise PixioError("no images given: name image files or folders")
    return found


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An RGB uint8 (H, W, 3) array; a clear error for files that are not readable images."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise PixioError(f"{path}: not a readable image ({e.__class__.__name__}): remove or replace the file") from e


def to_uint8(image: np.ndarray) -> np.ndarray:
    """float [0, 1] or uint8, (H, W), (H, W, 1) or (H, W, 3) -> uint8 (H, W, 3)."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = (np.clip(np.nan_to_num(a.astype(np.float32)), 0, 1) * 255 + 0.5).astype(np.uint8)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return a


def colorize(values: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """A scalar map (depth, error) as a uint8 RGB image with matplotlib's viridis."""
    from matplotlib import colormaps

    v = np.asarray(values, dtype=np.float32)
    finite = np.isfinite(v)
    lo = float(v[finite].min()) if lo is None and finite.any() else (lo or 0.0)
    hi = float(v[finite].max()) if hi is None and finite.any() else (hi or 1.0)
    t = np.where(finite, (v - lo) / max(hi - lo, 1e-12), 0.0)
    return (colormaps["viridis"](np.clip(t, 0, 1))[..., :3] * 255).astype(np.uint8)


def image_grid(rows: Sequence[Sequence[np.ndarray]], labels: Sequence[str] | None = None, pad: int = 2) -> np.ndarray:
    """Rows of equally sized images as one uint8 image; `labels` head the columns."""
    cells = [[to_uint8(im) for im in row] for row in rows]
    h, w = cells[0][0].shape[:2]
    n_cols = max(len(r) for r in cells)
    top = 14 if labels else 0
    grid = np.full((top + len(cells) * (h + pad) + pad, n_cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(cells):
        for j, im in enumerate(row):
            if im.shape[:2] != (h, w):
                im = np.asarray(Image.fromarray(im).resize((w, h), Image.NEAREST))
            y, x = top + pad + i * (h + pad), pad + j * (w + pad)
            grid[y : y + h, x : x + w] = im
    if labels:
        img = Image.fromarray(grid)
        draw = ImageDraw.Draw(img)
        for j, text in enumerate(labels):
            draw.text((pad + j * (w + pad) + 2, 1), text, fill=(0, 0, 0))
        grid = np.asarray(img)
    return grid


def save_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    buf = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buf, format="PNG")
    write_bytes(path, buf.getvalue())
    return Path(path)
