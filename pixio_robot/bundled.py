"""Weights that ship inside the repository, found by name and checked against a SHA-256.

A clone carries them (`pixio_robot/weights/`, with a model card saying how each was made), so
the demo and the tests of downstream jobs need no download. The hashes below are the ones the
model card states: a file that does not match (edited, truncated, replaced by a Git LFS pointer)
is refused instead of silently giving other features.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import PixioError

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class Bundled:
    path: str  # relative to WEIGHTS_DIR
    sha256: str
    summary: str


BUNDLED: dict[str, Bundled] = {
    "sim_vitn16": Bundled(
        "sim_vitn16.safetensors",
        "cff9390e62365deee4f256cbbb052771368e6753ec289e06f6ea73fe01f9d232",
        "Pixio ViT-N/16, 8 class tokens, 128x128, pre-trained by pretrain/ on frames rendered by envs/",
    ),
    "sim_vitn16_v2": Bundled(
        "sim_vitn16_v2.safetensors",
        "9486535a30caac550863c0c2ae0e9fac1225e93265015d9ea36910cfb2238210",
        "Pixio ViT-N/16 encoder v2: the sim_vitn16 recipe for 3x the steps (6000 x 64 images) on own-task frames",
    ),
    "recon_sim_vitn16": Bundled(
        "recon_sim_vitn16.safetensors",
        "6d8b672bc424dc9aa460a57900cbfce8dd8e52e59300250a9d03ed8fc752ebcc",
        "reconstruction head (recon/) trained on multi-view captures of envs/ over sim_vitn16",
    ),
    "recon_sim_vitn16_v2": Bundled(
        "recon_sim_vitn16_v2.safetensors",
        "af76c77ee1fac42dff4804b317455a4e8368635eb2b91caa134a950e8e552f3c",
        "reconstruction head v2 (poses in a shared frame, 10000 steps + ten fine-tuning rounds with flips, the last "
        "four also on other cameras, assuming fovy 50 when told no intrinsics) over encoder v2 (sim_vitn16_v2)",
    ),
    "depth_sim_vitn16": Bundled(
        "depth_sim_vitn16.safetensors",
        "28ee469e8fd790016ea4a03aa20967205ec5fc11492e9d770c0d59575d71aeab",
        "monocular depth head (DPT, recon/) trained on RGB-D captures of envs/ over sim_vitn16",
    ),
    "depth_sim_vitn16_v2": Bundled(
        "depth_sim_vitn16_v2.safetensors",
        "39ae76137e1ad7920ab9aa30bf6c7821165d365cc9c66b5d00b26154779fe465",
        "the same monocular depth head (DPT), same data and recipe, over encoder v2 (sim_vitn16_v2)",
    ),
}

_verified: dict[str, tuple[int, int]] = {}  # name -> (size, mtime_ns) of the file last verified


def is_bundled(name: str | os.PathLike) -> bool:
    return isinstance(name, str) and name in BUNDLED


def bundled_path(name: str) -> Path:
    """Path of bundled weights `name`, after checking the file's SHA-256 (once per process)."""
    if name not in BUNDLED:
        raise PixioError(f"{name!r}: no bundled weights of that name: choose one of {', '.join(BUNDLED)}")
    entry = BUNDLED[name]
    path = WEIGHTS_DIR / entry.path
    if not path.is_file():
        raise PixioError(f"{path}: bundled weights {name!r} are missing: restore them with `git checkout -- {path}`")
    stat = path.stat()
    if _verified.get(name) != (stat.st_size, stat.st_mtime_ns):
        digest = sha256_file(path)
        if digest != entry.sha256:
            raise PixioError(
                f"{path}: SHA-256 {digest[:12]}... is not the {entry.sha256[:12]}... recorded in "
                f"pixio_robot/bundled.py: the file was changed or truncated; restore it with `git checkout -- {path}`"
            )
        _verified[name] = (stat.st_size, stat.st_mtime_ns)
    return path


def resolve_weights(spec: str | os.PathLike) -> Path:
    """The file of a bundled name (SHA-256 checked; a file of that name in the working folder
    wins), else `spec` as a path."""
    return bundled_path(spec) if is_bundled(spec) and not os.path.exists(spec) else Path(spec)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
