"""`pixio-robot curate`: the reconstruction loss and colour entropy of every image of a
dataset under a trained pre-training checkpoint, written as the curation file that
`data.curation=` reads (format and use: `curation.py`)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from pixio_robot.atomic import write_json
from pixio_robot.devices import pick_device, pick_dtype
from pixio_robot.errors import PixioError

from .checkpointing import load_trained
from .curation import FORMAT, color_entropy
from .data import READ_ERRORS, center_square, find_sources, shard_samples, to_model_input


def run_curate(cfg) -> int:
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
        self.model, self.device, self.dtype, self.repeats = model, device, dtype, repeats
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, batch: list[np.ndarray]) -> list[float]:
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
