"""Loss-based self-curation (Pixio's data curation, docs/DESIGN.md section 3).

`pixio-robot curate` runs a trained pre-training checkpoint over a dataset and stores, per
image, its reconstruction loss and its colour entropy. Training with `data.curation=FILE`
then accepts each image, each time it comes up, with probability equal to its stored loss
(clipped to [0, 1]): hard-to-reconstruct images are seen more often, trivial ones rarely.
`data.min_color_entropy` first drops images whose colours are too uniform (text, blank
frames) and `data.min_image_side` small ones. Images missing from the file are never drawn.

The file is JSON: {"format": "pixio-robot/curation", "checkpoint": ..., "image_size": ...,
"images": {key: {"loss", "color_entropy", "height", "width"}}}, keys as the data module names
images (folder-relative paths, `dataset/camera/frame` for LeRobot, `shard.tar/key` for shards).
"""

from __future__ import annotations

import io
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


def run_curate(cfg) -> int:
    # Imported here: the data module imports this one for `Curation`.
    from tqdm import tqdm

    from pixio_robot.atomic import write_json
    from pixio_robot.devices import pick_device, pick_dtype

    from .checkpointing import load_trained
    from .data import center_square, find_sources

    out = Path(cfg.out)
    if out.suffix != ".json":
        raise PixioError(f"out={out}: the curation file is JSON: name it *.json")
    if out.exists() and not cfg.overwrite:
        raise PixioError(f"{out} exists: pass overwrite=true to replace it, or choose another out=")
    if cfg.repeats < 1 or cfg.batch_size < 1:
        raise PixioError("repeats and batch_size must be at least 1")
    ckpt, model = load_trained(cfg.checkpoint)
    if ckpt["kind"] != "pretrain":
        raise PixioError(f"{ckpt['path']} is a {ckpt['kind']} checkpoint: curation needs a pretrain (decoder) one")
    sources = find_sources(cfg.sources, cfg.cameras, cfg.frame_stride)
    device = pick_device(cfg.device)
    scorer = _LossScorer(model.to(device), device, pick_dtype(cfg.dtype), cfg.repeats, cfg.seed)
    size = model.cfg.image_size
    reader = _Images(sources)
    total = len(sources.index) if sources.index is not None else None
    scores: dict[str, dict] = {}
    keys, batch = [], []
    for key, image in tqdm(reader, total=total, desc="curate", unit="img"):
        square = center_square(image, size)
        scores[key] = {"color_entropy": color_entropy(square), "height": image.height, "width": image.width}
        keys.append(key)
        batch.append(square)
        if len(batch) == cfg.batch_size:
            for k, loss in zip(keys, scorer(batch), strict=True):
                scores[k]["loss"] = loss
            keys, batch = [], []
    for k, loss in zip(keys, scorer(batch) if batch else [], strict=True):
        scores[k]["loss"] = loss
    if not scores:
        raise PixioError(f"no readable image in {', '.join(cfg.sources)}")
    header = {"format": FORMAT, "checkpoint": ckpt["path"], "step": int(ckpt["step"]), "image_size": size}
    write_json(out, header | {"repeats": cfg.repeats, "seed": cfg.seed, "images": scores})
    losses = np.array([v["loss"] for v in scores.values()])
    print(
        f"wrote {out}: {len(scores)} images, loss mean {losses.mean():.3f} (min {losses.min():.3f}, max "
        f"{losses.max():.3f})" + (f", {reader.skipped} unreadable images skipped" if reader.skipped else "")
    )
    return 0


class _Images:
    """(key, PIL image) of every readable image of the sources; counts the unreadable ones."""

    def __init__(self, sources):
        self.sources, self.skipped = sources, 0

    def __iter__(self):
        from PIL import Image

        from .data import READ_ERRORS, shard_samples

        index = self.sources.index
        if index is not None:
            for i in range(len(index)):
                try:
                    yield index.key(i), index.read(i)
                except READ_ERRORS:
                    self.skipped += 1
            return
        for url in self.sources.shards:
            for _, key, data in shard_samples(url):
                try:
                    with Image.open(io.BytesIO(data)) as im:
                        yield key, im.convert("RGB")
                except READ_ERRORS:
                    self.skipped += 1


class _LossScorer:
    """The pre-training loss of each image (mean over `repeats` random maskings)."""

    def __init__(self, model, device, dtype, repeats: int, seed: int):
        import torch

        self.model, self.device, self.dtype, self.repeats = model, device, dtype, repeats
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, batch: list[np.ndarray]) -> list[float]:
        import torch

        from .data import to_model_input

        model = self.model
        with torch.no_grad():
            x = to_model_input(torch.from_numpy(np.stack(batch)), self.device)
            total = torch.zeros(len(batch))
            for _ in range(self.repeats):
                noise = model.random_noise(len(batch), generator=self.generator).to(self.device)
                with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                    out = model(x, noise)
                total += ((out.pred.float() - model.targets(x, out.ids_mask)) ** 2).mean(dim=(1, 2)).cpu()
        return (total / self.repeats).tolist()
