"""The frozen Pixio encoder under a head: chosen for training, found again for inference.

A head only makes sense on the exact encoder weights it was trained on, so its checkpoint
records the encoder file and its SHA-256. A random-initialised encoder (a size name, or
`encoder_init=random` for the architecture of a given file) is written into the run folder as
`encoder.safetensors`, so evaluation and inference see the same random weights.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from pixio_robot.bundled import BUNDLED, bundled_path, resolve_weights
from pixio_robot.checkpoints import load_encoder, save_encoder, sha256_file
from pixio_robot.encoder import PixioViT, create_encoder
from pixio_robot.errors import PixioError

ENCODER_FILE = "encoder.safetensors"


def prepare_encoder(
    spec: str, init: str, seed: int, run_dir: Path, image_size: tuple[int, int]
) -> tuple[PixioViT, dict]:
    """(frozen encoder, record for the checkpoint) for a training run in `run_dir`."""
    if init not in ("pretrained", "random"):
        raise PixioError(f"encoder_init={init!r}: use pretrained or random")
    spec = _file(spec)
    is_file = os.path.exists(spec)
    if is_file and init == "pretrained":
        encoder = load_encoder(spec)
        info = {"path": str(Path(spec).resolve()), "sha256": sha256_file(spec), "source": spec, "init": init}
        return _frozen(encoder), info
    local = run_dir / ENCODER_FILE
    if local.is_file():  # a resumed run: the random encoder was drawn and saved before
        encoder = load_encoder(local)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if is_file:
                encoder = PixioViT(**load_encoder(spec).config)
            else:
                encoder = create_encoder(spec, img_size=list(image_size))  # also checks the size name
        save_encoder(encoder, local)
    info = {"path": ENCODER_FILE, "sha256": sha256_file(local), "source": spec, "init": "random", "seed": seed}
    return _frozen(encoder), info


def resolve_encoder(info: dict, checkpoint: str | os.PathLike, override: str | None = None) -> tuple[PixioViT, str]:
    """(frozen encoder, its sha256) of a head checkpoint; `override` names another file (or a
    bundled encoder)."""
    if override:
        override = _file(override)
        if not os.path.exists(override):
            raise PixioError(f"encoder={override}: no such file (give an encoder file or a bundled name)")
        sha = sha256_file(override)
        if sha != info.get("sha256"):
            print(
                f"warning: encoder={override} is not the encoder this head was trained on "
                f"(sha256 {sha[:12]} vs {str(info.get('sha256'))[:12]}): results may be meaningless",
                file=sys.stderr,
            )
        return _frozen(load_encoder(override)), sha
    path = Path(info["path"])
    here = Path(checkpoint).resolve().parent
    if not path.is_absolute():
        path = here / path
    if not path.is_file():
        # A head copied elsewhere with its encoder beside it (e.g. a bundle, under any name) still
        # finds it: the file of the recorded name first, then any safetensors file there; a head
        # trained on a bundled encoder on another machine (e.g. a GPU run) finds the bundled one.
        names = [path.name, ENCODER_FILE, *sorted(p.name for p in here.glob("*.safetensors"))]
        own = Path(checkpoint).resolve()
        beside = [here / n for n in dict.fromkeys(names) if (here / n).is_file() and here / n != own]
        match = [p for p in beside if sha256_file(p) == info.get("sha256")]
        match = match or [bundled_path(n) for n, b in BUNDLED.items() if b.sha256 == info.get("sha256")]
        if not match:
            raise PixioError(
                f"the encoder this head was trained on ({path}) is missing: put it next to the head, or pass "
                "encoder=PATH to the same weights"
            )
        path = match[0]
    sha = sha256_file(path)
    if sha != info.get("sha256"):
        raise PixioError(
            f"{path} changed since the head was trained (sha256 {sha[:12]}, recorded {str(info.get('sha256'))[:12]}): "
            "pass encoder=PATH explicitly to use it anyway"
        )
    return _frozen(load_encoder(path)), sha


def _file(spec: str) -> str:
    """The file of a bundled name (a path of that name wins), else `spec` unchanged."""
    return str(resolve_weights(spec))


def _frozen(encoder: PixioViT) -> PixioViT:
    return encoder.eval().requires_grad_(False)
