"""Training data: image folders, WebDataset shards (corrupt images skipped and counted),
LeRobot frames, reproducible batches, curation, and clear errors for bad sources.

The helpers at the top (`make_images`, `make_shards`, `make_lerobot`, `run_args`) are shared
by the other pretrain test files."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixio_robot import PixioError
from pixio_robot.cli import main
from pretrain.curation import Curation, color_entropy
from pretrain.data import BatchPlan, IndexedBatches, RandomResizedCrop, ShardBatches, find_sources, make_loader

# ---- shared helpers -------------------------------------------------------------------------


def make_images(folder: Path, n: int = 24, seed: int = 0) -> Path:
    """Smooth colour waves with a few discs, of varied sizes, nested, in jpg/png/webp."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = (int(v) for v in rng.integers(72, 120, 2))
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack(
            [0.5 + 0.5 * np.sin(rng.uniform(0.02, 0.2) * xx + rng.uniform(0.02, 0.2) * yy + c) for c in range(3)], -1
        )
        for _ in range(2):
            cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(6, 20)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 1, 3)
        sub = folder / ("a/b" if i % 3 == 0 else "a" if i % 3 == 1 else "")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255).astype(np.uint8)).save(sub / f"img{i:03d}.{('png', 'jpg', 'webp')[i % 3]}")
    return folder


def make_shards(folder: Path, images: Path, n_shards: int = 4, corrupt: tuple[int, int] | None = (1, 2)) -> list[Path]:
    """WebDataset shards of the images (key.ext + key.cls); `corrupt` = (shard, sample) whose
    image bytes are garbage."""
    folder.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in images.rglob("*") if p.is_file())
    per = len(files) // n_shards
    shards = []
    for s in range(n_shards):
        path = folder / f"part-{s:03d}.tar"
        with tarfile.open(path, "w") as tar:
            for j, p in enumerate(files[s * per : (s + 1) * per]):
                data = b"\x89PNG but not really" if corrupt == (s, j) else p.read_bytes()
                for name, payload in ((f"s{s}_{j:03d}{p.suffix}", data), (f"s{s}_{j:03d}.cls", b"0")):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        shards.append(path)
    return shards


def make_lerobot(root: Path, episodes: int = 2, frames: int = 6) -> Path:
    """A local LeRobot dataset with a video camera, an image camera and a state."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    shape = {"shape": (48, 64, 3), "names": ["height", "width", "channels"]}
    ds = LeRobotDataset.create(
        "local/frames",
        fps=10,
        root=root,
        use_videos=True,
        features={
            "observation.images.front": {"dtype": "video", **shape},
            "observation.images.wrist": {"dtype": "image", **shape},
            "observation.state": {"dtype": "float32", "shape": (2,), "names": None},
        },
    )
    for ep in range(episodes):
        for f in range(frames):
            img = np.full((48, 64, 3), (ep * 100, f * 40, 120), np.uint8)
            ds.add_frame(
                {
                    "observation.images.front": img,
                    "observation.images.wrist": 255 - img,
                    "observation.state": np.zeros(2, np.float32),
                    "task": "look",
                }
            )
        ds.save_episode()
    ds.finalize()
    return root


def run_args(data, run_dir, steps=6, *extra) -> list[str]:
    """`pixio-robot pretrain` arguments for the 64px test preset."""
    sources = ",".join(f'"{d}"' for d in ([data] if isinstance(data, (str, Path)) else data))
    return [
        "pretrain",
        "pretrain=vitn16_64",
        f"data.sources=[{sources}]",
        f"run.dir={run_dir}",
        f"schedule.steps={steps}",
        "schedule.warmup_steps=1",
        "run.progress=false",
        "run.threads=1",  # small models: one thread is faster, and steady on a shared machine
        *extra,
    ]


@pytest.fixture(autouse=True)
def _keep_threads():
    """Training runs set torch's thread count (run.threads); give other tests theirs back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def plan(micro=4, accum=1, rank=0, world=1, size=64, cells=4) -> BatchPlan:
    return BatchPlan(micro, accum, rank, world, 0, size, (0.2, 1.0), cells)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("images"))


# ---- sources ----------------------------------------------------------------------------------


def test_folders_are_searched_at_any_depth_for_jpg_png_webp(images):
    src = find_sources([str(images)])
    keys = [src.index.key(i) for i in range(len(src.index))]
    assert len(keys) == 24 and {Path(k).suffix for k in keys} == {".png", ".jpg", ".webp"}
    assert any(k.count("/") == 3 for k in keys)  # images/a/b/imgXXX
    assert src.index.read(0).mode == "RGB"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p, "no images (.jpg/.jpeg/.png/.webp/.bmp), .tar shards or LeRobot dataset"),
        (lambda p: p / "missing", "no such file or folder"),
        (lambda p: str(p / "*.png"), "matches no file or folder"),
        (lambda p: str(p / "shard-{000..002}.tar"), "no such shard"),
    ],
)
def test_empty_or_missing_sources_are_clear_errors(tmp_path, make, message):
    with pytest.raises(PixioError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        find_sources([str(make(tmp_path))])


def test_unreadable_folder_stops_at_once(tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"x{i}.jpg").write_bytes(b"definitely not a jpeg")
    assert main(run_args(bad, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert "none of the images tried could be read" in err and err.count("\n") == 1
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_no_sources_at_all(tmp_path, capsys):
    assert main(["pretrain", f"run.dir={tmp_path}"]) == 2
    assert "no training data: pass data.sources=" in capsys.readouterr().err


def test_mixing_shards_and_folders_is_refused(tmp_path, images):
    shards = make_shards(tmp_path / "shards", images, corrupt=None)
    with pytest.raises(PixioError, match="mixes WebDataset shards with image folders"):
        find_sources([str(images), str(shards[0])])


# ---- WebDataset shards ------------------------------------------------------------------------


def test_corrupt_image_in_a_shard_is_skipped_and_counted(tmp_path, images):
    shards = make_shards(tmp_path / "shards", images, corrupt=(1, 2))
    src = find_sources([str(tmp_path / "shards" / "part-{000..003}.tar")])
    assert src.shards == [str(s) for s in shards]
    stream = iter(ShardBatches(src.shards, plan(micro=5), num_workers=1))
    batches = [next(stream) for _ in range(5)]  # 25 images: one pass over the 23 good ones and on
    keys = [k for b in batches for k in b["keys"]]
    assert "part-001.tar/s1_002" not in keys
    assert batches[-1]["skipped"] == 1
    assert batches[0]["images"].shape == (5, 64, 64, 3) and batches[0]["images"].dtype == torch.uint8
    assert len(set(keys[:23])) == 23


def test_shards_train_end_to_end_and_log_the_skipped_image(tmp_path, images):
    make_shards(tmp_path / "shards", images, corrupt=(0, 1))
    run = tmp_path / "run"
    # 4 shards for 2 workers; batch 8 x 4 steps = 32 > 23 good images: the corrupt one is met
    assert main(run_args(tmp_path / "shards", run, 4, "batch_size=8", "data.num_workers=2", "run.log_every=1")) == 0
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",")[-1] == "skipped_images" and int(rows[-1].split(",")[-1]) >= 1


def test_fewer_shards_than_consumers_is_a_clear_error(tmp_path, images):
    shards = make_shards(tmp_path / "shards", images, n_shards=2, corrupt=None)
    with pytest.raises(PixioError, match="2 shards for 1 ranks x 4 workers"):
        ShardBatches([str(s) for s in shards], plan(), num_workers=4)


# ---- LeRobot frames ---------------------------------------------------------------------------


def test_lerobot_frames_are_images_per_camera(tmp_path):
    root = make_lerobot(tmp_path / "lerobot")
    src = find_sources([str(root)])
    assert len(src.index) == 2 * 6 * 2
    assert src.index.key(0) == "lerobot/observation.images.front/0"
    assert src.index.key(3) == "lerobot/observation.images.wrist/1"
    front = np.asarray(src.index.read(2 * 7))  # episode 1, frame 1, front (video)
    wrist = np.asarray(src.index.read(2 * 7 + 1))
    assert front.shape == (48, 64, 3)
    assert np.abs(front[24, 32].astype(int) - (100, 40, 120)).max() <= 6  # lossy video
    assert tuple(wrist[24, 32]) == (155, 215, 135)  # lossless image
    only = find_sources([str(root)], cameras=["observation.images.wrist"], frame_stride=3)
    assert len(only.index) == 4 and only.index.key(1) == "lerobot/observation.images.wrist/3"
    with pytest.raises(PixioError, match="no RGB camera 'top'"):
        find_sources([str(root)], cameras=["top"])


# ---- batches ----------------------------------------------------------------------------------


def _take(dataset, n, workers=0):
    it = iter(make_loader(dataset, workers))
    return [next(it) for _ in range(n)]


def test_batches_do_not_depend_on_workers_ranks_or_resume(images):
    index = find_sources([str(images)]).index
    one = _take(IndexedBatches(index, plan(micro=8)), 4)
    two_workers = _take(IndexedBatches(index, plan(micro=8)), 4, workers=2)
    for a, b in zip(one, two_workers, strict=True):
        assert a["keys"] == b["keys"] and torch.equal(a["images"], b["images"]) and torch.equal(a["noise"], b["noise"])
    # two ranks with half the batch see the two halves of the one-process batch
    r0 = _take(IndexedBatches(index, plan(micro=4, rank=0, world=2)), 4)
    r1 = _take(IndexedBatches(index, plan(micro=4, rank=1, world=2)), 4)
    for a, h0, h1 in zip(one, r0, r1, strict=True):
        assert a["keys"] == h0["keys"] + h1["keys"]
        assert torch.equal(a["images"], torch.cat([h0["images"], h1["images"]]))
    # resuming at micro-batch 2 gives what followed
    resumed = _take(IndexedBatches(index, plan(micro=8), start_micro=2), 2)
    assert [b["keys"] for b in resumed] == [b["keys"] for b in one[2:]]
    # every image once per epoch (24 images = 3 batches), a new order the next epoch
    epoch0 = [k for b in one[:3] for k in b["keys"]]
    assert len(set(epoch0)) == 24 and one[3]["keys"] != one[0]["keys"]


def test_random_resized_crop_stays_in_the_area_range():
    crop = RandomResizedCrop(64, (0.2, 1.0))
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = crop.params(90, 120, rng)
        assert top >= 0 and top + h <= 90 and left >= 0 and left + w <= 120
        assert 0.2 * 90 * 120 * 0.9 <= h * w <= 90 * 120
    out = crop(Image.new("RGB", (120, 90), (10, 20, 30)), rng)
    assert out.shape == (64, 64, 3) and tuple(out[5, 5]) == (10, 20, 30)


def test_curation_draws_images_by_their_stored_loss(images):
    index = find_sources([str(images)]).index
    keys = [index.key(i) for i in range(len(index))]
    table = {k: {"loss": 0.0 if i < 12 else (1.5 if i < 18 else 0.5), "color_entropy": 6.0} for i, k in enumerate(keys)}
    table[keys[20]]["color_entropy"] = 1.0  # text-like: dropped by the entropy filter
    cur = Curation(table, min_color_entropy=4.0)
    drawn = [k for b in _take(IndexedBatches(index, plan(micro=12), curation=cur), 30) for k in b["keys"]]
    counts = {k: drawn.count(k) for k in keys}
    assert all(counts[k] == 0 for k in keys[:12]) and counts[keys[20]] == 0
    always, half = [counts[k] for k in keys[12:18]], [counts[k] for i, k in enumerate(keys) if i >= 18 and i != 20]
    assert min(always) > 1.4 * max(np.mean(half), 1)  # loss 1.5 -> always, 0.5 -> about half the epochs


def test_color_entropy_separates_flat_from_varied_images():
    flat = np.zeros((32, 32, 3), np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert color_entropy(flat) == 0.0 and color_entropy(noise) > 8.0


@pytest.mark.slow
def test_frames_recorded_by_the_simulation_package_train(tmp_path):
    """`pixio-robot collect` (envs) -> LeRobot dataset -> pretrain, through the CLI only."""
    data = tmp_path / "pick_place"
    assert main(["collect", "env=pick_place", "episodes=1", f"out={data}", "cameras=[front,wrist]"]) == 0
    src = find_sources([str(data)])
    assert len(src.index) > 20 and src.index.key(1) == "pick_place/observation.images.wrist/0"
    assert np.asarray(src.index.read(0)).std() > 5  # a rendered scene, not a blank frame
    assert main(run_args(data, tmp_path / "run", 3, "model.image_size=128", "batch_size=8")) == 0
    assert (tmp_path / "run" / "encoder.safetensors").exists()
