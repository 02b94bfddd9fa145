"""Feature cache: every frame of a dataset encoded once by the frozen encoder, memory-mapped.

The encoder never changes during behaviour cloning, so its features are computed once per
(encoder weights, layer, image size, camera, storage dtype) and read back by every training
run. Layout, inside the dataset folder:

    <dataset>/features/<key>/
        manifest.json    format, key parts (encoder SHA-256 and spec, layer, image size, camera,
                         dtype), the dataset fingerprint it was built from, and per array its
                         file, shape and dtype
        global.npy       (N, D) mean of the class tokens (the CortexBench embedding)
        patches.npy      (N, h, w, D) patch tokens (only when a head needs them)

`key` = `<encoder name>-<first 12 hex of its SHA-256>-block<layer>-<H>x<W>-<camera>-<dtype>`.
A cache whose key parts differ is simply another folder, so changing any of them builds a new
cache; a cache built before the dataset changed (episodes appended, re-recorded) is rebuilt in
place; a cache lacking an array a head needs is rebuilt with it. A folder is built under a
temporary name and renamed into place whole, so an interrupted build leaves nothing half-made.
A cache folder given explicitly (`cache=<folder>`) whose encoder or settings differ from the
run's is refused, never overwritten. A policy reading several cameras has one cache per camera
(with `cache=<folder>`: `<folder>/<camera>`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pixio_robot.atomic import atomic_dir, read_json, write_json
from pixio_robot.errors import PixioError
from pixio_robot.extract import FeatureExtractor

from .data import Demonstrations

FORMAT = "pixio_robot.policies.features/1"
MANIFEST = "manifest.json"
DTYPES = {"float16": np.float16, "float32": np.float32}


@dataclass(frozen=True)
class CacheKey:
    encoder_name: str
    encoder_sha256: str
    layer: int
    image_size: tuple[int, int]
    camera: str
    dtype: str = "float16"

    @property
    def folder_name(self) -> str:
        h, w = self.image_size
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.encoder_name)
        block = f"block{self.layer}" if self.layer >= 0 else "final"
        return f"{name}-{self.encoder_sha256[:12]}-{block}-{h}x{w}-{self.camera}-{self.dtype}"

    def to_dict(self) -> dict:
        return {
            "encoder_name": self.encoder_name,
            "encoder_sha256": self.encoder_sha256,
            "layer": self.layer,
            "image_size": list(self.image_size),
            "camera": self.camera,
            "dtype": self.dtype,
        }


@dataclass
class FeatureCache:
    """Memory-mapped features of one dataset: `arrays["global"]` (N, D), `arrays["patches"]`."""

    path: Path
    manifest: dict
    arrays: dict[str, np.ndarray]
    built: bool  # True when this call encoded the frames, False when it reused them

    def gather(self, name: str, index: torch.Tensor) -> torch.Tensor:
        """Rows `index` (any shape) of array `name`, in the cache's dtype (`join_views` makes
        them float32; torch converts float16 several times faster than numpy)."""
        rows = self.arrays[name][index.reshape(-1).numpy()]
        return torch.from_numpy(rows).reshape(*index.shape, *rows.shape[1:])


def default_root(dataset: str | os.PathLike) -> Path:
    return Path(dataset) / "features"


def read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    return read_json(path, FORMAT, "a feature-cache manifest of this toolkit", f"delete {folder}")


def check_key(folder: Path, manifest: dict, key: CacheKey) -> None:
    """Refuse a cache made with another encoder or other settings, naming the difference."""
    theirs, mine = manifest["key"], key.to_dict()
    if theirs["encoder_sha256"] != mine["encoder_sha256"]:
        raise PixioError(
            f"feature cache {folder} was computed with another encoder checkpoint (weights SHA-256 "
            f"{theirs['encoder_sha256'][:12]}..., {theirs['encoder_name']}) than this run's "
            f"({mine['encoder_sha256'][:12]}..., {mine['encoder_name']}): refusing to use it; point cache= "
            "elsewhere or use cache=auto"
        )
    for part in ("layer", "image_size", "camera", "dtype"):
        if theirs[part] != mine[part]:
            raise PixioError(
                f"feature cache {folder} holds {part}={theirs[part]!r} features but this run needs "
                f"{part}={mine[part]!r}: refusing to use it; point cache= elsewhere or use cache=auto"
            )


def open_cache(folder: Path, manifest: dict) -> dict[str, np.ndarray]:
    arrays = {}
    for name, info in manifest["arrays"].items():
        path = folder / info["file"]
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise PixioError(f"{path}: unreadable cached features ({e}): delete {folder} to rebuild it") from None
        if list(arr.shape) != info["shape"]:
            raise PixioError(f"{path}: shape {arr.shape}, manifest says {info['shape']}: delete {folder}")
        arrays[name] = arr
    return arrays


def ensure_cache(
    demos: Demonstrations,
    extractor: FeatureExtractor,
    key: CacheKey,
    need_patches: bool,
    location: str = "auto",
    progress: bool = True,
) -> FeatureCache:
    """The cache for `key`, built if missing or stale.

    location: "auto" (`<dataset>/features/<key>`), or an explicit cache folder: used if its
    manifest matches, built if it does not exist, refused if it holds other features."""
    explicit = location not in ("auto", "", None)
    folder = Path(location) if explicit else default_root(demos.root) / key.folder_name
    need = ["global", "patches"] if need_patches else ["global"]
    manifest = read_manifest(folder)
    if manifest is None and explicit and folder.exists() and any(folder.iterdir()):
        raise PixioError(f"cache={folder} holds something other than a feature cache: refusing to write there")
    if manifest is not None:
        check_key(folder, manifest, key)
        fresh = manifest["dataset"]["fingerprint"] == demos.fingerprint()
        if fresh and all(n in manifest["arrays"] for n in need):
            return FeatureCache(folder, manifest, open_cache(folder, manifest), built=False)
        if fresh:  # keep what it had, add what is missing
            need = sorted(set(need) | set(manifest["arrays"]))
    return build_cache(demos, extractor, key, folder, need, progress)


def build_cache(
    demos: Demonstrations,
    extractor: FeatureExtractor,
    key: CacheKey,
    folder: Path,
    arrays: list[str],
    progress: bool = True,
) -> FeatureCache:
    frames = demos.decode_frames(key.camera)
    dtype = DTYPES[key.dtype]
    block = extractor.blocks[0]
    with atomic_dir(folder) as tmp:
        out: dict[str, np.ndarray] = {}
        for start, feats in extractor.batches(frames, progress=progress, desc=f"features {key.camera}"):
            parts = {"global": feats["global"]}
            if "patches" in arrays:
                parts["patches"] = feats[f"patches.block{block}"]
            for name, value in parts.items():
                if name not in out:
                    shape = (len(frames), *value.shape[1:])
                    out[name] = np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
                out[name][start : start + len(value)] = value.numpy()
        for arr in out.values():
            arr.flush()
        manifest = {
            "format": FORMAT,
            "key": key.to_dict(),
            "dataset": {"fingerprint": demos.fingerprint(), "frames": len(demos), "episodes": demos.num_episodes},
            "arrays": {n: {"file": f"{n}.npy", "shape": list(a.shape), "dtype": key.dtype} for n, a in out.items()},
        }
        write_json(tmp / MANIFEST, manifest)
        del out
    return FeatureCache(folder, manifest, open_cache(folder, manifest), built=True)
