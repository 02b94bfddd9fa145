"""Training checkpoints: one file per save in `run.dir/checkpoints/step-XXXXXXXX.pt`.

A checkpoint holds the trained module, the optimizer, the schedule, the step, the data
position and the RNG states of every rank, so that `resume=true` continues exactly. Files are
written through `pixio_robot.atomic` (temporary file + fsync + rename), so a kill at any
moment leaves the previous checkpoint as the latest, complete one; only the newest
`keep_checkpoints` are kept. Everything in the file is a tensor, a number, a string or a
container of those (non-tensor state is JSON text), so it loads with
`torch.load(weights_only=True)`: nothing is ever unpickled.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import torch

from pixio_robot.atomic import TMP_PREFIX, atomic_path
from pixio_robot.encoder import PixioViT
from pixio_robot.errors import PixioError

from .configuration_pixio import ModelConfig
from .modeling_distill import DistillModel
from .modeling_pixio import PixioPretrainModel

FORMAT = "pixio-robot/training-checkpoint"
_NAME = re.compile(r"^step-(\d+)\.pt$")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints, oldest first (temporary files are ignored)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def save_checkpoint(run_dir: str | Path, step: int, payload: dict, keep: int) -> Path:
    path = checkpoint_dir(run_dir) / f"step-{step:08d}.pt"
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "step": step} | payload, tmp)
    for _, old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():  # a run folder: its latest checkpoint
        latest = latest_checkpoint(path)
        if latest is None:
            raise PixioError(f"{path}: no checkpoints in {checkpoint_dir(path)}")
        return _read(latest)
    if not path.exists():
        raise PixioError(f"{path}: no such checkpoint (give a step-*.pt file or a run folder)")
    return _read(path)


def _read(path: Path) -> dict:
    try:
        # mmap: ranks resuming a large run share the file's pages instead of each reading a copy
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise PixioError(f"{path}: not a readable training checkpoint ({e.__class__.__name__})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise PixioError(
            f"{path}: not a training checkpoint of `pixio-robot pretrain`/`distill` (encoder files load with "
            "pixio_robot.load_encoder)"
        )
    ckpt["path"] = str(path)
    return ckpt


def load_trained(path: str | Path) -> tuple[dict, torch.nn.Module]:
    """(checkpoint, trained module in eval mode) from a run folder or a step-*.pt file."""
    ckpt = load_checkpoint(path)
    cfg = json.loads(ckpt["config"])
    encoder = PixioViT(**json.loads(ckpt["encoder"]))
    if ckpt["kind"] == "pretrain":
        model = PixioPretrainModel(ModelConfig(**cfg["model"]), encoder)
    else:
        s = cfg["student"]
        teacher_dim = ckpt["model"]["projector.3.weight"].shape[0]
        model = DistillModel(encoder, teacher_dim, s["image_size"], s["mask_grid"], s["mask_ratio"])
    model.load_state_dict(ckpt["model"])
    return ckpt, model.eval()


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint that loads. Writes are atomic, so this is the newest file unless
    something outside the toolkit damaged it; then the one before it, with a warning."""
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            _read(path)
            return path
        except PixioError as e:
            print(f"pretrain: warning: {e}; trying the previous checkpoint")
    return None


def remove_stale_temporaries(folder: str | Path) -> None:
    """Delete temporary files left by a killed writer (they are never read)."""
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.glob(f"{TMP_PREFIX}*"):
            p.unlink(missing_ok=True)


# ---- RNG states -----------------------------------------------------------------------------


def rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": json.dumps(np.random.get_state(legacy=False), default=_to_list),
        "python": json.dumps(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np_state = json.loads(state["numpy"])
    np_state["state"] = {
        k: np.array(v, dtype=np.uint32) if isinstance(v, list) else v for k, v in np_state["state"].items()
    }
    np.random.set_state(np_state)
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_list(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.integer):
        return int(x)
    raise TypeError(type(x))
