"""Finding and reading image files."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

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
