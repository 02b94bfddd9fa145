"""Training images for pre-training: sources, the crop, and reproducible batches.

Sources (`data.sources`, mixed freely within a kind):
- indexed: image files and folders (any nesting; jpg, png, webp, bmp) and the frames of
  LeRobot datasets (a folder with `meta/info.json`; each RGB camera of each frame is one
  image; this is also how frames rendered by the simulation package arrive);
- streamed: WebDataset tar shards given as files, folders of shards, `{000..099}` brace ranges
  or URLs (`https://`, `pipe:`, anything `webdataset.gopen` opens), for data that does not fit
  one disk. Images inside a shard that cannot be decoded are skipped and counted.

The only augmentation is RandomResizedCrop (area `crop_scale`, aspect 3/4-4/3, bicubic).

Every random choice about a sample (its place in the epoch, its crop, its masking noise) is
drawn from a generator seeded by the sample's identity (seed, epoch, index), never from a
global stream. So a batch does not depend on the number of data workers or ranks, a resumed
run sees exactly the batches it would have seen, and two ranks with half the batch each see
the same images, crops and masks as one process with the whole batch.

Batches are made inside the loader workers and come out as dicts: `images` uint8
(b, S, S, 3), `noise` float32 (b, cells), `keys` (names used by curation), `worker`, `state`
(where the worker is in its stream: what a checkpoint stores) and `skipped` (unreadable
images so far).
"""

from __future__ import annotations

import glob
import io
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pixio_robot.errors import PixioError
from pixio_robot.images import IMAGE_SUFFIXES

from .curation import Curation

# Tags that keep the generators of different purposes apart for the same sample.
_PERMUTE, _SAMPLE, _ACCEPT = 1, 2, 3
_SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_URL = re.compile(r"^[a-z][a-z0-9+.-]*:")  # http:, https:, pipe:, s3:, gs:, ...
_SHARD_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
READ_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def sample_rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in keys])


# ---- the crop -----------------------------------------------------------------------------


@dataclass
class RandomResizedCrop:
    """torchvision's RandomResizedCrop (its own `get_params`: 10 tries, then a central crop),
    drawing from a seed taken from a given generator, so each sample's crop follows from its
    identity and not from the process's random state."""

    size: int
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def params(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        from torchvision.transforms import RandomResizedCrop as TorchvisionCrop

        seed = int(rng.integers(0, 2**63 - 1))
        shape_only = torch.empty(1, 1, 1).expand(1, height, width)  # get_params reads the size alone
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return TorchvisionCrop.get_params(shape_only, list(self.scale), list(self.ratio))

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> np.ndarray:
        top, left, h, w = self.params(image.height, image.width, rng)
        out = image.resize((self.size, self.size), Image.BICUBIC, box=(left, top, left + w, top + h))
        return np.asarray(out, dtype=np.uint8)


def to_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, torch.Tensor):  # LeRobot: (3, H, W), uint8 or float in [0, 1]
        t = image if image.dtype == torch.uint8 else (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
        image = t.permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB")


# ---- indexed sources ----------------------------------------------------------------------


class ImageFiles:
    """Image files, from files and folders searched recursively, in a stable order."""

    def __init__(self, paths: list[Path], root: Path | None = None):
        self.paths = paths
        self.root = root

    def __len__(self) -> int:
        return len(self.paths)

    def key(self, i: int) -> str:
        p = self.paths[i]
        return str(p.relative_to(self.root.parent)) if self.root is not None else str(p)

    def read(self, i: int) -> Image.Image:
        with Image.open(self.paths[i]) as im:
            return im.convert("RGB")


class LeRobotFrames:
    """The RGB camera frames of a local LeRobot dataset, one image per (frame, camera).
    The dataset is opened lazily so that each loader worker opens its own."""

    def __init__(self, root: Path, cameras: list[str], stride: int = 1):
        from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

        from pixio_robot.journal import rollback

        self.root = root
        rollback(root)  # a recording killed mid-segment: back to its last complete state
        try:
            meta = LeRobotDatasetMetadata(f"local/{root.name}", root=root)
        except Exception as e:
            raise PixioError(f"{root}: not a readable LeRobot dataset ({e.__class__.__name__}: {e})") from e
        rgb = [k for k in meta.camera_keys if k not in meta.depth_keys and tuple(meta.features[k]["shape"])[-1] == 3]
        missing = [c for c in cameras if c not in rgb]
        if missing:
            raise PixioError(f"{root}: no RGB camera {missing[0]!r}; this dataset has {', '.join(rgb) or 'none'}")
        self.cameras = [c for c in rgb if c in cameras] if cameras else rgb
        if not self.cameras:
            raise PixioError(f"{root}: this LeRobot dataset has no RGB camera features")
        self.video_keys = set(meta.video_keys)
        self.frames = list(range(0, meta.total_frames, stride))
        self._ds = None

    def __len__(self) -> int:
        return len(self.frames) * len(self.cameras)

    def key(self, i: int) -> str:
        return f"{self.root.name}/{self.cameras[i % len(self.cameras)]}/{self.frames[i // len(self.cameras)]}"

    def _dataset(self):
        if self._ds is None:
            from lerobot.datasets.lerobot_dataset import LeRobotDataset

            self._ds = LeRobotDataset(f"local/{self.root.name}", root=self.root, video_backend="pyav")
            rows = self._ds.hf_dataset.with_format(None)
            table = rows.select_columns(["timestamp", "episode_index"])[:]
            self._timestamps = table["timestamp"]
            self._episodes = table["episode_index"]
            # image cameras: one column each, so reading one does not decode the others
            self._columns = {c: rows.select_columns([c]) for c in self.cameras if c not in self.video_keys}
        return self._ds

    def read(self, i: int) -> Image.Image:
        from lerobot.datasets.video_utils import decode_video_frames

        ds = self._dataset()
        frame, camera = self.frames[i // len(self.cameras)], self.cameras[i % len(self.cameras)]
        if camera not in self.video_keys:
            return to_pil(self._columns[camera][frame][camera])
        ep = int(self._episodes[frame])
        start = ds.meta.episodes[ep][f"videos/{camera}/from_timestamp"]
        path = self.root / ds.meta.get_video_file_path(ep, camera)
        ts = start + float(self._timestamps[frame])
        return to_pil(decode_video_frames(path, [ts], ds.tolerance_s, "pyav", return_uint8=True)[0])


class ImageIndex:
    """Indexed sources concatenated: `len`, `key(i)`, `read(i)`."""

    def __init__(self, parts: list):
        self.parts = [p for p in parts if len(p)]
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _locate(self, i: int):
        j = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.parts[j], i - int(self.offsets[j])

    def key(self, i: int) -> str:
        part, k = self._locate(i)
        return part.key(k)

    def read(self, i: int) -> Image.Image:
        part, k = self._locate(i)
        return part.read(k)


# ---- finding the sources ------------------------------------------------------------------


@dataclass
class Sources:
    index: ImageIndex | None = None
    shards: list[str] | None = None

    def describe(self) -> str:
        if self.index is not None:
            return f"{len(self.index)} images"
        return f"{len(self.shards)} shards"


def find_sources(specs: list[str], cameras: list[str] = (), frame_stride: int = 1) -> Sources:
    """Classify and expand `data.sources`; a clear error for anything empty or missing."""
    if not specs:
        raise PixioError("no training data: pass data.sources=[folder, shards-{000..009}.tar, lerobot_root, ...]")
    parts, shards = [], []
    for spec in map(str, specs):
        if _is_shard_spec(spec):
            shards += _expand_shards(spec)
            continue
        matches = sorted(glob.glob(spec)) if glob.has_magic(spec) else [spec]
        if not matches:
            raise PixioError(f"{spec}: matches no file or folder")
        for m in map(Path, matches):
            if (m / "meta" / "info.json").is_file():
                parts.append(LeRobotFrames(m, list(cameras), frame_stride))
            elif m.is_dir():
                images = sorted(p for p in m.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
                tars = sorted(str(p) for p in m.rglob("*") if str(p).endswith(_SHARD_SUFFIXES))
                if images:
                    parts.append(ImageFiles(images, m))
                elif tars:
                    shards += tars
                else:
                    raise PixioError(
                        f"{m}: no images ({'/'.join(IMAGE_SUFFIXES)}), .tar shards or LeRobot dataset "
                        "(meta/info.json) in this folder or below it"
                    )
            elif m.is_file() and m.suffix.lower() in IMAGE_SUFFIXES:
                parts.append(ImageFiles([m]))
            elif m.exists():
                raise PixioError(f"{m}: not an image, a .tar shard or a folder")
            else:
                raise PixioError(f"{m}: no such file or folder")
    if parts and shards:
        raise PixioError(
            "data.sources mixes WebDataset shards with image folders/LeRobot datasets: train on one kind "
            "(pack the folders into shards, e.g. with webdataset's tarp or ShardWriter)"
        )
    if shards:
        return Sources(shards=shards)
    index = ImageIndex(parts)
    if len(index) == 0:
        raise PixioError(f"no images in {', '.join(specs)}: the LeRobot datasets have no frames")
    return Sources(index=index)


def check_readable(sources: Sources) -> None:
    """Fail at once, with one line, when the first images tried cannot be read at all."""
    errors = []
    if sources.index is not None:
        index, n = sources.index, len(sources.index)
        for i in sorted({0, n // 3, (2 * n) // 3, n - 1}):
            try:
                index.read(i)
                return
            except Exception as e:  # noqa: BLE001 - any failure to read is reported the same way
                errors.append(f"{index.key(i)}: {e.__class__.__name__}")
    else:
        for url in sources.shards[:3]:
            for _, key, data in shard_samples(url):
                try:
                    with Image.open(io.BytesIO(data)) as im:
                        im.convert("RGB")
                    return
                except Exception as e:  # noqa: BLE001
                    errors.append(f"{key}: {e.__class__.__name__}")
                if len(errors) >= 8:
                    break
            else:
                errors.append(f"{url}: no image entries")
    raise PixioError(f"none of the images tried could be read ({'; '.join(errors[:2])}): check data.sources")


def _is_shard_spec(spec: str) -> bool:
    return bool(_URL.match(spec)) and not spec.startswith("file:") or spec.endswith(_SHARD_SUFFIXES) or "{" in spec


def _expand_shards(spec: str) -> list[str]:
    from braceexpand import braceexpand

    urls = []
    for s in braceexpand(spec.removeprefix("file:")):
        if _URL.match(s):
            urls.append(s)
        elif glob.has_magic(s):
            urls += sorted(glob.glob(s))
        elif os.path.isfile(s):
            urls.append(s)
        else:
            raise PixioError(f"{s}: no such shard (from data.sources entry {spec!r})")
    if not urls:
        raise PixioError(f"{spec}: matches no shard")
    return urls


# ---- batches ------------------------------------------------------------------------------


@dataclass
class BatchPlan:
    """How one rank's micro-batches are cut out of the run's stream of samples."""

    micro_batch: int  # images per rank per accumulation step
    accum_steps: int
    rank: int
    world_size: int
    seed: int
    image_size: int
    crop_scale: tuple[float, float]
    num_cells: int  # masking cells per image (noise per sample)

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.accum_steps * self.world_size


class _Batcher:
    """Shared by both batch streams: crop + noise per sample, packing."""

    def __init__(self, plan: BatchPlan):
        self.plan = plan
        self.crop = RandomResizedCrop(plan.image_size, tuple(plan.crop_scale))

    def sample(self, image: Image.Image, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return self.crop(image, rng), rng.random(self.plan.num_cells, dtype=np.float32)

    @staticmethod
    def pack(images, noise, keys, worker, state, skipped) -> dict:
        return {
            "images": torch.from_numpy(np.stack(images)),
            "noise": torch.from_numpy(np.stack(noise)),
            "keys": keys,
            "worker": worker,
            "state": state,
            "skipped": skipped,
        }


def _worker() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class IndexedBatches(torch.utils.data.IterableDataset, _Batcher):
    """Micro-batches over an indexed source.

    The run's samples form one stream: epoch after epoch, each a permutation of the images
    (of the accepted ones, with curation) drawn from (seed, epoch). Optimizer step s takes
    stream positions [s*G, (s+1)*G) for the global batch G; inside it, accumulation step j of
    rank r takes the slice number j*world_size + r. Loader worker w makes micro-batches
    start+w, start+w+W, ..., the order in which the DataLoader hands them out.
    """

    def __init__(self, index: ImageIndex, plan: BatchPlan, start_micro: int = 0, curation: Curation | None = None):
        _Batcher.__init__(self, plan)
        self.index = index
        self.start_micro = start_micro
        self.accept_p = curation.probabilities([index.key(i) for i in range(len(index))]) if curation else None
        self._ends: list[int] = []  # stream position where each epoch ends
        self._order: tuple[int, np.ndarray] = (-1, np.empty(0, np.int64))  # one epoch's order, cached

    def epoch_order(self, epoch: int) -> np.ndarray:
        if self._order[0] == epoch:
            return self._order[1]
        n = len(self.index)
        order = sample_rng(self.plan.seed, epoch, _PERMUTE).permutation(n)
        if self.accept_p is not None:
            u = sample_rng(self.plan.seed, epoch, _ACCEPT).random(n)
            order = order[u[order] < self.accept_p[order]]
        self._order = (epoch, order)
        return order

    def locate(self, position: int) -> tuple[int, int]:
        """Stream position -> (epoch, image index). Only the epoch lengths are kept (with
        curation they vary), and the order of the epoch in use."""
        while not self._ends or self._ends[-1] <= position:
            length = len(self.epoch_order(len(self._ends)))
            self._ends.append((self._ends[-1] if self._ends else 0) + length)
        epoch = int(np.searchsorted(self._ends, position, side="right"))
        begin = self._ends[epoch - 1] if epoch else 0
        return epoch, int(self.epoch_order(epoch)[position - begin])

    def micro_positions(self, k: int) -> range:
        p = self.plan
        step, j = divmod(k, p.accum_steps)
        first = step * p.global_batch + (j * p.world_size + p.rank) * p.micro_batch
        return range(first, first + p.micro_batch)

    def __iter__(self) -> Iterator[dict]:
        w, n_workers = _worker()
        skipped = 0
        k = self.start_micro + w
        while True:
            images, noise, keys = [], [], []
            for pos in self.micro_positions(k):
                epoch, i = self.locate(pos)
                image, i, bad = self._read(i)
                skipped += bad
                crop, nz = self.sample(image, sample_rng(self.plan.seed, epoch, i, _SAMPLE))
                images.append(crop)
                noise.append(nz)
                keys.append(self.index.key(i))
            yield self.pack(images, noise, keys, w, {"micro": k}, skipped)
            k += n_workers

    def _read(self, i: int) -> tuple[Image.Image, int, int]:
        """The image at i, or at the next readable index (deterministic) when it is unreadable."""
        n = len(self.index)
        for bad in range(min(n, 64)):
            j = (i + bad) % n
            try:
                return self.index.read(j), j, bad
            except READ_ERRORS as e:
                print(f"pretrain: warning: skipping unreadable image {self.index.key(j)} ({e.__class__.__name__})")
        raise PixioError(f"{min(n, 64)} images in a row could not be read (from {self.index.key(i)}): check the data")


class ShardBatches(torch.utils.data.IterableDataset, _Batcher):
    """Micro-batches streamed from WebDataset shards.

    Each (rank, worker) pair is a consumer with its own shards: in epoch e the shard list is
    permuted from (seed, e) and consumer c of C takes every C-th shard. A consumer's stream
    is endless (epoch after epoch) and its position (epoch, shard, sample) travels with every
    batch, so a checkpoint can store where each consumer is and a resumed run skips straight
    there. Loader worker w acts as consumer rank*W + (w + offset) % W, with offset = batches
    already taken % W, so that after a resume the DataLoader's round-robin resumes too.
    """

    def __init__(
        self,
        shards: list[str],
        plan: BatchPlan,
        num_workers: int,
        states: dict[int, dict] | None = None,
        offset: int = 0,
        curation: Curation | None = None,
    ):
        _Batcher.__init__(self, plan)
        self.shards = shards
        self.num_workers = max(1, num_workers)
        self.states = states or {}
        self.offset = offset
        self.curation = curation
        consumers = plan.world_size * self.num_workers
        if len(shards) < consumers:
            raise PixioError(
                f"{len(shards)} shards for {plan.world_size} ranks x {self.num_workers} workers: every "
                f"(rank, worker) needs its own shard; write at least {consumers} shards or lower data.num_workers"
            )

    def consumer(self, w: int) -> int:
        return self.plan.rank * self.num_workers + (w + self.offset) % self.num_workers

    def my_shards(self, c: int, epoch: int) -> list[int]:
        order = sample_rng(self.plan.seed, epoch, _PERMUTE).permutation(len(self.shards))
        return [int(s) for s in order[c :: self.plan.world_size * self.num_workers]]

    def __iter__(self) -> Iterator[dict]:
        w, n = _worker()
        if n != self.num_workers:
            raise PixioError(f"ShardBatches was built for {self.num_workers} workers but runs in {n}")
        c = self.consumer(w)
        state = dict(self.states.get(c, {"epoch": 0, "shard": 0, "sample": 0})) | {"skipped": 0}
        images, noise, keys = [], [], []
        while True:
            mine = self.my_shards(c, state["epoch"])
            full_pass, got_any = state["shard"] == 0 and state["sample"] == 0, False
            while state["shard"] < len(mine):
                shard = mine[state["shard"]]
                for s, key, data in shard_samples(self.shards[shard], start=state["sample"]):
                    state["sample"] = s + 1
                    rng = sample_rng(self.plan.seed, state["epoch"], shard, s, _SAMPLE)
                    if self.curation is not None and not self.curation.accept(key, rng):
                        continue
                    try:
                        with Image.open(io.BytesIO(data)) as im:
                            image = im.convert("RGB")
                    except READ_ERRORS as e:
                        state["skipped"] += 1
                        print(f"pretrain: warning: skipping corrupt image {key} ({e.__class__.__name__})")
                        continue
                    got_any = True
                    crop, nz = self.sample(image, rng)
                    images.append(crop)
                    noise.append(nz)
                    keys.append(key)
                    if len(images) == self.plan.micro_batch:
                        yield self.pack(images, noise, keys, c, dict(state), state["skipped"])
                        images, noise, keys = [], [], []
                state["shard"] += 1
                state["sample"] = 0
            if full_pass and not got_any:
                raise PixioError(
                    f"shards {', '.join(self.shards[i] for i in mine[:3])} hold no readable image "
                    "(.jpg/.jpeg/.png/.webp entries): check data.sources"
                )
            state.update(epoch=state["epoch"] + 1, shard=0, sample=0)


def shard_samples(url: str, start: int = 0) -> Iterator[tuple[int, str, bytes]]:
    """(sample number, key, image bytes) of one WebDataset shard from sample `start` on.
    Samples before `start` are passed over without reading their images; an unreadable or
    truncated shard ends early with a warning (the run goes on with the next shard)."""
    from webdataset.gopen import gopen

    name = Path(url.split("?")[0]).name
    try:
        stream = gopen(url)
    except Exception as e:  # noqa: BLE001 - whatever the transport raises, the shard is skipped
        print(f"pretrain: warning: skipping shard {url}: cannot open it ({e})")
        return
    s, key, data = -1, None, None
    try:
        with stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                path = Path(member.name)
                base, _, ext = path.name.partition(".")
                k = str(path.parent / base)
                if k != key:
                    if key is not None and s >= start and data is not None:
                        yield s, f"{name}/{key}", data
                    s, key, data = s + 1, k, None
                if s >= start and data is None and ext.lower() in _SHARD_IMAGE_EXTS:
                    data = tar.extractfile(member).read()
            if key is not None and s >= start and data is not None:
                yield s, f"{name}/{key}", data
    except (tarfile.TarError, OSError, EOFError) as e:
        print(f"pretrain: warning: shard {url} ends early after sample {s} ({e.__class__.__name__}: {e})")


def center_square(image: Image.Image, size: int) -> np.ndarray:
    """The central square of an image resized to size x size (bicubic): how evaluation-time
    commands (curate, pretrain-view) show an image to the model."""
    side = min(image.width, image.height)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return np.asarray(image.resize((size, size), Image.BICUBIC, box=(left, top, left + side, top + side)), np.uint8)


def make_loader(dataset: torch.utils.data.IterableDataset, num_workers: int, pin_memory: bool = False):
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=2 if num_workers else None,
        persistent_workers=False,
    )


def to_model_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B, S, S, 3) -> ImageNet-normalised float32 (B, 3, S, S) on `device`."""
    from pixio_robot.encoder import IMAGENET_MEAN, IMAGENET_STD

    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return (x - mean) / std
