"""Monocular depth: train-depth, eval-depth and `depth IMAGES` end to end on scenes captured here
(vitn16 with random weights, 64x64 views), the NYUv2-style list reader, the geometry of
ground-truth depth, and the refusals of bad input."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from envs.cameras import backproject
from envs.capture import load_scene, scene_folders
from pixio_robot.cli import main
from pixio_robot.viz import rrd_entities
from recon.data import load_scenes
from recon.tokens import TokenCache


@pytest.fixture(scope="module")
def data(stack_scenes):
    return stack_scenes


def depth_args(data, out, *extra):
    return [
        "train-depth",
        f"data=[{data / 'train'}]",
        "encoder=vitn16",
        "image_size=64",
        f"out={out}",
        f"cache_dir={data / 'cache'}",
        "warmup_steps=5",
        "save_every=20",
        "log_every=5",
        "threads=1",
        "progress=false",
        *extra,
    ]


@pytest.fixture(scope="module")
def linear_run(data):
    out = data / "linear"
    assert main(depth_args(data, out, "steps=5", "depth.head=linear")) == 0
    return out


def nyu_style(root, views=3, size=(480, 640), seed=0):
    """A NYUv2-like folder: JPEG frames, 16-bit PNG depth in mm, a list of `rgb depth` lines."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(views):
        scene = root / "official_splits" / "test" / ("kitchen" if i < 2 else "office")
        scene.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(scene / f"rgb_{i:05d}.jpg")
        depth_mm = rng.integers(500, 4000, size, dtype=np.uint16)
        Image.fromarray(depth_mm).save(scene / f"sync_depth_{i:05d}.png")
        rel = scene.relative_to(root)
        lines.append(f"{rel}/rgb_{i:05d}.jpg {rel}/sync_depth_{i:05d}.png")
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    return root / "val.txt"


# ---- training and evaluation ------------------------------------------------------------------


@pytest.mark.parametrize("head", ["dpt", "linear"])
def test_a_depth_head_trained_briefly_lowers_its_loss_and_evaluates(data, tmp_path, head, capsys):
    out = tmp_path / head
    assert main(depth_args(data, out, "steps=40", f"depth.head={head}")) == 0
    losses = [float(r["loss"]) for r in csv.DictReader(open(out / "metrics.csv"))]
    assert losses[-1] < 0.7 * losses[0], losses
    result = tmp_path / "eval.json"
    args = ["eval-depth", f"checkpoint={out / 'model.safetensors'}", f"data=[{data / 'test'}]", f"out={result}"]
    assert main([*args, f"cache_dir={data / 'cache'}", "progress=false"]) == 0
    metrics = json.loads(result.read_text())
    assert set(metrics) == {"d1", "d2", "d3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog", "views"}
    assert metrics["views"] == 8 and 0 <= metrics["d1"] <= metrics["d2"] <= metrics["d3"] <= 1
    # an existing result is not overwritten; a folder that is no depth run is refused, untouched
    capsys.readouterr()
    assert main([*args, "progress=false"]) == 2 and "overwrite=true" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(depth_args(data, other, "steps=2")) == 2
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_the_depth_taps_are_the_encoders_dense_features(data, linear_run):
    """The cached taps are what `PixioViT.dense_features` gives: normed patch tokens with the mean
    normed class token, at blocks depth//4*(i+1)-1 (the official DPT input)."""
    import pixio_robot

    encoder = pixio_robot.load_encoder(linear_run / "encoder.safetensors")
    scene = load_scenes([data / "test"], 64)[0]
    taps = TokenCache(encoder, None, (64, 64), taps=encoder.dense_block_indices()).tokens(scene)
    x = pixio_robot.Preprocess(64)(list(scene.images))
    with torch.no_grad():
        expected = torch.stack(encoder.eval().dense_features(x), dim=1)
    assert taps.shape == expected.shape and torch.allclose(taps, expected, atol=1e-5)


def test_explicit_tap_blocks_are_saved_with_the_head_and_used_again(data, tmp_path):
    """`depth.blocks` replaces the official tap rule (which takes blocks 0-3 of a 6-block ViT-N);
    the head keeps its blocks, so eval-depth and `depth` tap the same ones."""
    from recon.depth import load_depth_model, tap_blocks

    out = tmp_path / "run"
    assert main(depth_args(data, out, "steps=2", "depth.head=linear", "depth.blocks=[-3]")) == 0
    head, encoder, _, _ = load_depth_model(out / "model.safetensors")
    assert head.config.blocks == [-3] and tap_blocks(encoder, head.config) == [len(encoder.blocks) - 3]
    assert encoder.dense_block_indices() == [0, 1, 2, 3]  # the official rule on this 6-block encoder


@pytest.mark.parametrize(
    "blocks, says", [("[1,2]", "depth.head=dpt taps 4 block(s)"), ("[1,2,4,9]", "block 9 does not exist")]
)
def test_tap_blocks_the_head_or_encoder_cannot_use_are_refused(data, tmp_path, capsys, blocks, says):
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(depth_args(data, out, "steps=2", f"depth.blocks={blocks}")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err
    assert not out.exists()


def test_nyu_style_lists_train_and_evaluate_with_the_eigen_crop(data, tmp_path):
    split = nyu_style(tmp_path / "nyu")
    scenes = load_scenes([split], (64, 64), cameras=False)
    assert [s.name for s in scenes] == ["official_splits/test/kitchen", "official_splits/test/office"]
    assert [s.num_views for s in scenes] == [2, 1] and scenes[0].K is None
    # the Eigen crop (rows 45:471, columns 41:601) before resizing: the crop's corner pixel
    # (nearest-neighbour resizing of the depth) is the first thing the scene's depth holds
    full = np.asarray(Image.open(split.parent / "official_splits/test/kitchen/sync_depth_00000.png"))
    assert scenes[0].depth[0, 0, 0] == pytest.approx(full[45:471, 41:601][3, 4] / 1000, abs=1e-6)
    run = tmp_path / "run"
    assert main(depth_args(data, run, "steps=3", "depth.head=linear", f"data=[{split}]")) == 0
    result = tmp_path / "eval.json"
    args = ["eval-depth", f"checkpoint={run / 'model.safetensors'}", f"data=[{split}]", f"out={result}"]
    assert main([*args, "progress=false", "threads=1"]) == 0
    assert json.loads(result.read_text())["views"] == 3


# ---- geometry of ground-truth depth ------------------------------------------------------------


def test_ground_truth_depth_in_millimetres_back_projects_to_the_scene(data, tmp_path):
    """A capture stored as an external scene (16-bit PNG depth in mm, cameras.npz) reads back
    through the depth reader; with the recorded intrinsics and poses its table pixels land on
    the table top (z = 0) and the depth command's cloud is the same back-projection."""
    from recon.depth import depth_reconstruction

    src = scene_folders(data / "test")[0]
    scene = load_scene(src)
    ext = tmp_path / "scene"
    (ext / "rgb").mkdir(parents=True)
    (ext / "depth").mkdir()
    for i, v in enumerate(scene.views):
        Image.fromarray(v.rgb).save(ext / "rgb" / f"{i:03d}.png")
        Image.fromarray(np.round(v.depth * 1000).astype(np.uint16)).save(ext / "depth" / f"{i:03d}.png")
    K, cam2world = np.stack([v.K for v in scene.views]), np.stack([v.cam2world for v in scene.views])
    np.savez(ext / "cameras.npz", K=K, cam2world=cam2world)
    read = load_scenes([ext], 64)[0]
    table = scene.meta["labels"].index("table")
    checked = 0
    for i, v in enumerate(scene.views):
        assert np.abs(read.depth[i] - v.depth).max() <= 0.0005 + 1e-6  # rounding to millimetres
        on_table = v.labels == table
        points = backproject(read.depth[i], read.K[i], read.cam2world[i])[on_table]
        # the table top is z = 0 in the world (the rest of the body: the top's edges, the legs)
        top = np.abs(points[:, 2]) < 0.002
        assert top.mean() > 0.9 and np.median(np.abs(points[top, 2])) < 0.0005, i
        checked += top.sum()
        # the cloud that `depth` and the demo write: in the camera frame, and placed in the world
        hit = read.depth[i] > 0
        for pose in (None, read.cam2world[i]):
            rec = depth_reconstruction(
                v.rgb[None], read.depth[i][None], read.K[i][None], None if pose is None else pose[None]
            )
            assert np.allclose(rec.points[0][hit], backproject(read.depth[i], read.K[i], pose)[hit], atol=1e-5)
    assert checked > 500


# ---- depth IMAGES ------------------------------------------------------------------------------


def test_depth_command_writes_png16_colour_ply_and_recording(data, linear_run, tmp_path, capsys):
    from pixio_robot.deps import open3d
    from recon.depth import predict_depth

    scene = sorted((data / "test").glob("scene_*"))[0]
    images = sorted((scene / "rgb").glob("*.png"))[:2]
    K = tmp_path / "K.npy"
    np.save(K, np.load(scene / "cameras.npz")["K"][0])
    out = tmp_path / "depth"
    model = linear_run / "model.safetensors"
    args = ["depth", *map(str, images), f"checkpoint={model}", f"out={out}", "threads=1"]
    assert main([*args, f"intrinsics={K}"]) == 0
    _, expected = predict_depth(model, [np.asarray(Image.open(images[0]).convert("RGB"))])
    png = np.asarray(Image.open(out / f"{images[0].stem}_depth.png"))
    assert png.dtype == np.uint16 and png.shape == (64, 64)
    assert np.abs(png.astype(np.float64) - expected[0] * 1000).max() <= 0.5 + 1e-6  # millimetres
    assert np.asarray(Image.open(out / f"{images[0].stem}_color.png")).shape == (64, 64, 3)
    cloud = open3d().io.read_point_cloud(str(out / f"{images[0].stem}.ply"))
    assert len(cloud.points) == 64 * 64 and cloud.has_colors()
    assert {"/world/points", "/world/cameras/view_000/depth"} <= rrd_entities(out / f"{images[0].stem}.rrd")
    # existing outputs are refused, a K of the wrong shape too; nothing is rewritten
    before = (out / f"{images[0].stem}_depth.png").read_bytes()
    capsys.readouterr()
    assert main(args) == 2 and "overwrite=true" in capsys.readouterr().err
    np.save(K, np.eye(4))
    assert main([*args, "overwrite=true", f"intrinsics={K}"]) == 2 and "expected (3, 3)" in capsys.readouterr().err
    assert (out / f"{images[0].stem}_depth.png").read_bytes() == before


# ---- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(10, 64, 3), (64, 300, 3)], ids=["under-a-patch", "stretched"])
def test_images_whose_sides_are_not_usable_are_refused(linear_run, tmp_path, capsys, shape):
    image = tmp_path / "odd.png"
    Image.fromarray(np.zeros(shape, np.uint8)).save(image)
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["depth", str(image), f"checkpoint={linear_run / 'model.safetensors'}", f"out={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "odd.png" in err and ("patch" in err or "crop" in err), err
    assert not out.exists()


def _broken_list(root, what):
    split = nyu_style(root, views=2)
    first = split.read_text().splitlines()[0].split()
    depth = root / first[1]
    if what == "missing-depth":
        depth.unlink()
    elif what == "all-invalid":
        for line in split.read_text().splitlines():
            Image.fromarray(np.zeros((480, 640), np.uint16)).save(root / line.split()[1])
    elif what == "wrong-shape":
        Image.fromarray(np.zeros((240, 320), np.uint16)).save(depth)
    return split


@pytest.mark.parametrize(
    "what, says",
    [("missing-depth", "not found"), ("all-invalid", "no valid depth"), ("wrong-shape", "240x320")],
)
def test_bad_depth_data_is_refused_in_one_line(data, tmp_path, capsys, what, says):
    split = _broken_list(tmp_path / "nyu", what)
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(depth_args(data, out, "steps=2", "depth.head=linear", f"data=[{split}]")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err
    assert not out.exists()


def test_a_scene_folder_without_depth_is_refused_for_depth_training(data, tmp_path, capsys):
    scene = tmp_path / "scene"
    shutil.copytree(scene_folders(data / "test")[0] / "rgb", scene / "rgb")
    capsys.readouterr()
    assert main(depth_args(data, tmp_path / "run", "steps=2", f"data=[{scene}]")) == 2
    assert "no depth/ folder" in capsys.readouterr().err
    # a list file has no cameras: train-recon says so instead of failing later
    split = nyu_style(tmp_path / "nyu", views=1)
    args = ["train-recon", f"data=[{split}]", "encoder=vitn16", f"out={tmp_path / 'recon'}", "progress=false"]
    assert main(args) == 2 and "train-depth" in capsys.readouterr().err


# ---- the bundled head -------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["depth_sim_vitn16", "depth_sim_vitn16_v2"])
def test_the_bundled_depth_head_is_accurate_on_fresh_scenes(tmp_path, head):
    """Each bundled DPT head on scenes it never saw (seeds >= 700000, the two tasks it was trained
    on) through eval-depth: the bundled result (d1 0.98, abs_rel 0.053-0.056 over 120 views)
    within the spread of a few views, far from an untrained head (d1 ~0.3)."""
    capture = ["capture", "views=4", "image_size=128", "expert_steps=0", "progress=false", "scenes=1"]
    for task in ("push", "stack"):
        assert main([*capture, f"env={task}", "seed=700123", f"out={tmp_path / task}"]) == 0
    result = tmp_path / "eval.json"
    data = f"data=[{tmp_path / 'push'},{tmp_path / 'stack'}]"
    assert main(["eval-depth", f"checkpoint={head}", data, f"out={result}", "progress=false"]) == 0
    metrics = json.loads(result.read_text())
    assert metrics["views"] == 8 and metrics["d1"] > 0.93 and metrics["abs_rel"] < 0.1, metrics


def test_a_depth_head_saved_before_the_shared_dpt_module_loads_unchanged(tmp_path):
    """Bundled heads name the decoder's weights without the "dpt." prefix they have now."""
    from recon.configuration_depth import DepthHeadConfig
    from recon.modeling_depth import DepthHead

    torch.manual_seed(0)
    head = DepthHead(DepthHeadConfig(features=8, channels=[4, 8, 8, 8]), 16).eval()
    old_names = {k.removeprefix("dpt."): v for k, v in head.state_dict().items()}
    assert "project.0.weight" in old_names
    again = DepthHead(DepthHeadConfig(features=8, channels=[4, 8, 8, 8]), 16).eval()
    again.load_state_dict(old_names)
    taps = torch.randn(2, 4, 3, 5, 16)
    assert torch.equal(again(taps, (48, 80)), head(taps, (48, 80)))
