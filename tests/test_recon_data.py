"""Scene data: the external folder format, resizing, view sets, and every kind of bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from envs.capture import load_scene
from pixio_robot.cli import main
from pixio_robot.errors import PixioError
from recon.configuration_recon import ReconConfig
from recon.data import find_scenes, load_scenes, read_scene, resize_view
from recon.losses import ReconLoss, Targets
from recon.modeling_recon import ReconModel
from recon.sampling import ViewSetSampler, fixed_view_sets


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    root = tmp_path_factory.mktemp("recon_data") / "cap"
    args = ["capture", "env=push", "views=3", "image_size=32", "expert_steps=0", "scenes=1", "progress=false"]
    assert main([*args, f"out={root}"]) == 0
    return root


def external_scene(capture, folder, views=None, depth_ext="npy"):
    """The captured scene rewritten in the external format (rgb/, depth/, cameras.npz)."""
    scene = load_scene(capture / "scene_000000")
    views = range(len(scene.views)) if views is None else views
    (folder / "rgb").mkdir(parents=True)
    (folder / "depth").mkdir()
    for i in views:
        v = scene.views[i]
        Image.fromarray(v.rgb).save(folder / "rgb" / f"view{i}.png")
        if depth_ext == "npy":
            np.save(folder / "depth" / f"view{i}.npy", v.depth)
        else:
            Image.fromarray(np.round(v.depth * 1000).astype(np.uint16)).save(folder / "depth" / f"view{i}.png")
    np.savez(
        folder / "cameras.npz",
        K=np.stack([scene.views[i].K for i in views]),
        cam2world=np.stack([scene.views[i].cam2world for i in views]),
    )
    return scene


def test_external_format_reads_like_the_capture(capture, tmp_path):
    scene = external_scene(capture, tmp_path / "ext")
    a, b = read_scene(capture / "scene_000000", 32), read_scene(tmp_path / "ext", 32)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.depth, b.depth)
    assert np.array_equal(a.K, b.K) and np.array_equal(a.cam2world, b.cam2world) and b.metric
    assert a.depth.dtype == np.float32 and np.array_equal(a.depth[0], scene.views[0].depth)
    # millimetre PNG depth
    external_scene(capture, tmp_path / "png", depth_ext="png")
    assert np.allclose(read_scene(tmp_path / "png", 32).depth, a.depth, atol=5e-4)
    # roots: a capture folder, a folder of scenes, or one scene
    assert find_scenes(capture) == [capture / "scene_000000"]
    assert find_scenes(tmp_path / "ext") == [tmp_path / "ext"]
    assert find_scenes(tmp_path) == [tmp_path / "ext", tmp_path / "png"]
    # scene.json can mark data without metric scale
    (tmp_path / "ext" / "scene.json").write_text('{"metric": false}')
    assert not read_scene(tmp_path / "ext", 32).metric


def test_views_of_other_sizes_are_resized_with_exact_intrinsics(capture, tmp_path):
    scene = external_scene(capture, tmp_path / "ext")
    # make view 1 twice as large (image, depth and K), as another camera might be
    v = scene.views[1]
    Image.fromarray(v.rgb).resize((64, 64), Image.BICUBIC).save(tmp_path / "ext" / "rgb" / "view1.png")
    np.save(tmp_path / "ext" / "depth" / "view1.npy", np.repeat(np.repeat(v.depth, 2, 0), 2, 1))
    cams = dict(np.load(tmp_path / "ext" / "cameras.npz"))
    K = cams["K"][1].copy()
    K[0, 0], K[1, 1] = K[0, 0] * 2, K[1, 1] * 2
    K[0, 2], K[1, 2] = (K[0, 2] + 0.5) * 2 - 0.5, (K[1, 2] + 0.5) * 2 - 0.5
    cams["K"][1] = K
    np.savez(tmp_path / "ext" / "cameras.npz", **cams)
    got = read_scene(tmp_path / "ext", 32)
    assert got.images.shape == (3, 32, 32, 3)
    assert np.array_equal(got.depth[1], v.depth) and np.allclose(got.K[1], v.K)
    # any other resolution: intrinsics follow the pixels (u' + 0.5 = (u + 0.5) * s)
    image, depth, K2 = resize_view(v.rgb, v.depth, v.K, (48, 64))
    assert image.shape == (48, 64, 3) and depth.shape == (48, 64)
    assert np.allclose(K2[:2, 2], [(v.K[0, 2] + 0.5) * 2 - 0.5, (v.K[1, 2] + 0.5) * 1.5 - 0.5])


def test_nan_and_negative_depth_count_as_missing(capture, tmp_path):
    external_scene(capture, tmp_path / "ext")
    d = np.load(tmp_path / "ext" / "depth" / "view0.npy")
    d[:4] = np.nan
    d[4:6] = -1.0
    d[6, 0] = np.inf
    np.save(tmp_path / "ext" / "depth" / "view0.npy", d)
    scene = read_scene(tmp_path / "ext", 32)
    assert np.isfinite(scene.depth).all() and (scene.depth[0, :7][:, :1] == 0).all()
    tgt = Targets.from_views(
        torch.from_numpy(scene.depth)[None], torch.from_numpy(scene.K)[None], torch.from_numpy(scene.cam2world)[None]
    )
    assert not tgt.valid[0, 0, :6].any() and not tgt.valid[0, 0, 6, 0]
    torch.manual_seed(0)
    model = ReconModel(ReconConfig(dim=16, depth=2, num_heads=2, head_hidden=16), 8)
    loss, _ = ReconLoss(model.config)(model(torch.randn(1, 3, 2, 2, 8)), tgt)
    assert torch.isfinite(loss)
    # a scene without any valid depth is refused
    for f in (tmp_path / "ext" / "depth").glob("*.npy"):
        np.save(f, np.full((32, 32), np.nan, np.float32))
    with pytest.raises(PixioError, match="no valid depth"):
        read_scene(tmp_path / "ext", 32)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no_depth", "no depth/ folder"),
        ("missing_one_depth", "no depth for view2.png"),
        ("no_cameras", "no cameras.npz"),
        ("few_poses", "cam2world has shape"),
        ("not_rigid", "not a rigid camera-to-world transform"),
        ("nan_pose", "not a rigid camera-to-world transform"),
        ("same_position", "same camera position"),
        ("bad_K", "not a pinhole K"),
        ("depth_size", "depth must have its image's size"),
        ("no_rgb", "no images in rgb/"),
    ],
)
def test_bad_external_scenes_are_refused_with_one_clear_line(capture, tmp_path, damage, message):
    folder = tmp_path / "ext"
    external_scene(capture, folder)
    cams = dict(np.load(folder / "cameras.npz"))
    if damage == "no_depth":
        shutil.rmtree(folder / "depth")
    elif damage == "missing_one_depth":
        (folder / "depth" / "view2.npy").unlink()
    elif damage == "no_cameras":
        (folder / "cameras.npz").unlink()
    elif damage == "few_poses":
        cams["cam2world"] = cams["cam2world"][:2]
    elif damage == "not_rigid":
        cams["cam2world"][1, :3, :3] *= 2.0
    elif damage == "nan_pose":
        cams["cam2world"][2, 0, 3] = np.nan
    elif damage == "same_position":
        cams["cam2world"][2, :3, 3] = cams["cam2world"][0, :3, 3]
    elif damage == "bad_K":
        cams["K"][0, 0, 0] = 0.0
    elif damage == "depth_size":
        np.save(folder / "depth" / "view1.npy", np.ones((16, 16), np.float32))
    elif damage == "no_rgb":
        shutil.rmtree(folder / "rgb")
        (folder / "rgb").mkdir()
    if damage != "no_cameras":
        np.savez(folder / "cameras.npz", **cams)
    with pytest.raises(PixioError, match=message) as e:
        read_scene(folder, 32)
    assert "\n" not in str(e.value)
    # geometry-free reading (what `recon` needs) does not care about depth or poses
    if damage in ("no_depth", "no_cameras", "not_rigid", "same_position"):
        assert read_scene(folder, 32, geometry=False).images.shape == (3, 32, 32, 3)


def test_training_refuses_single_views_and_bad_options_before_writing(capture, tmp_path, capsys):
    external_scene(capture, tmp_path / "scenes" / "one", views=[0])
    out = tmp_path / "run"
    base = ["train-recon", "encoder=vitn16", "image_size=32", f"out={out}", "progress=false"]
    assert main([*base, f"data=[{tmp_path / 'scenes'}]"]) == 2
    assert "1 view(s), but at least 2" in capsys.readouterr().err
    assert main([*base, f"data=[{capture}]", "min_views=1"]) == 2
    assert "at least 2 views" in capsys.readouterr().err
    assert main([*base, f"data=[{capture}]", "image_size=40"]) == 2
    assert main([*base, f"data=[{tmp_path / 'nowhere'}]"]) == 2
    assert not out.exists()  # nothing was written by any refused run
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main([*base, f"data=[{capture}]", f"out={other}"]) == 2
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_view_sets_are_reproducible_and_cover_the_range():
    sampler = ViewSetSampler([6, 6, 3, 2], min_views=2, max_views=4, batch_size=5, seed=1)
    sizes = set()
    for step in range(50):
        sets = sampler(step)
        assert [s for s, _ in sets] == [s for s, _ in sampler(step)]  # same step, same draw
        n = len(sets[0][1])
        sizes.add(n)
        for scene, views in sets:
            assert len(views) == n and len(set(views)) == n and max(views) < [6, 6, 3, 2][scene]
    assert sizes == {2, 3, 4}
    fixed = fixed_view_sets([6, 3, 2], views=3, sets_per_scene=2, seed=0)
    assert [s for s, _ in fixed] == [0, 0, 1, 1]  # the 2-view scene has no 3-view set
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(fixed, fixed_view_sets([6, 3, 2], 3, 2, 0), strict=True))
    with pytest.raises(PixioError):
        ViewSetSampler([1, 1], 2, 4, 2)


def test_load_scenes_limits_and_reports(capture):
    scenes = load_scenes([capture], 32, limit=1)
    assert len(scenes) == 1 and scenes[0].num_views == 3
    with pytest.raises(PixioError, match="no data given"):
        load_scenes([], 32)
