"""Multi-view RGB-D captures: the documented format, exact geometry across views, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from envs.cameras import project
from envs.capture import load_scene, scene_folders
from pixio_robot.cli import main

CAPTURE = ["capture", "env=stack", "views=4", "image_size=96", "expert_steps=0", "progress=false"]


@pytest.fixture(scope="module")
def capture_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("captures") / "stack"
    assert main([*CAPTURE, "scenes=2", f"out={root}"]) == 0
    return root


def test_capture_writes_the_documented_format(capture_dir):
    meta = json.loads((capture_dir / "capture.json").read_text())
    assert meta["format"] == "pixio_robot.envs.capture/1" and meta["scenes"] == ["scene_000000", "scene_000001"]
    folders = scene_folders(capture_dir)
    scene = load_scene(folders[0])
    assert len(scene.views) == 4 and scene.meta["seed"] == 0
    cameras = np.load(folders[0] / "cameras.npz")
    for i, view in enumerate(scene.views):
        assert view.rgb.shape == (96, 96, 3) and view.rgb.dtype == np.uint8
        assert view.depth.shape == (96, 96) and view.depth.dtype == np.float32
        assert view.labels.dtype == np.uint16 and view.labels.max() < len(scene.meta["labels"])
        assert np.array_equal(cameras["K"][i], view.K) and np.array_equal(cameras["cam2world"][i], view.cam2world)
        assert np.allclose(view.cam2world[:3, :3] @ view.cam2world[:3, :3].T, np.eye(3))
        assert ((view.depth > 0) == (view.labels > 0)).all()  # depth exactly where a surface was hit
    # views are spread around: no two cameras at the same place
    positions = np.stack([v.cam2world[:3, 3] for v in scene.views])
    assert np.min([np.linalg.norm(a - b) for i, a in enumerate(positions) for b in positions[i + 1 :]]) > 0.1
    assert not np.array_equal(load_scene(folders[1]).views[0].rgb, scene.views[0].rgb)


def test_depth_of_two_views_back_projects_to_the_same_points_on_an_object(capture_dir):
    scene = load_scene(scene_folders(capture_dir)[0])
    label = scene.meta["labels"].index("base")  # the large cube
    seen = [i for i, v in enumerate(scene.views) if (v.labels == label).sum() > 30]
    assert len(seen) >= 2, "the cube should be visible from at least two views"
    state = dict(zip(scene.meta["object_state"]["names"], scene.meta["object_state"]["values"], strict=True))
    center = np.array([state["base_x"], state["base_y"], state["base_z"]])
    a, b = scene.views[seen[0]], scene.views[seen[1]]
    points = scene.points(seen[0])[a.labels == label]
    assert np.abs(points - center).max() < 0.034 * np.sqrt(3) + 0.002  # within the cube's bounds
    # A's cube points seen from B: where B sees the cube there, its depth is the same. Inverse
    # depth is linear across a flat face, so interpolate it between B's four nearest pixels.
    uvz = project(points, b.K, b.cam2world)
    u0, v0 = np.floor(uvz[:, 0]).astype(int), np.floor(uvz[:, 1]).astype(int)
    h, w = b.depth.shape
    ok = (u0 >= 0) & (u0 < w - 1) & (v0 >= 0) & (v0 < h - 1)
    u0, v0, fu, fv, z = u0[ok], v0[ok], uvz[ok, 0] - u0[ok], uvz[ok, 1] - v0[ok], uvz[ok, 2]
    corners = [(v0, u0), (v0, u0 + 1), (v0 + 1, u0), (v0 + 1, u0 + 1)]
    on_cube = np.all([b.labels[c] == label for c in corners], axis=0)
    weights = [(1 - fu) * (1 - fv), fu * (1 - fv), (1 - fu) * fv, fu * fv]
    inv = sum(wt / np.where(b.depth[c] > 0, b.depth[c], np.inf) for wt, c in zip(weights, corners, strict=True))
    gap = np.abs(1 / inv[on_cube] - z[on_cube])
    visible = gap < 0.01  # the rest lie on faces B cannot see (or straddle an edge)
    assert visible.sum() > 10
    assert np.median(gap[visible]) < 0.002


def test_append_continues_and_other_folders_are_refused(capture_dir, tmp_path, capsys):
    import shutil

    root = tmp_path / "stack"
    shutil.copytree(capture_dir, root)
    assert main([*CAPTURE, "scenes=1", f"out={root}"]) == 2  # exists: needs append=true
    assert main([*CAPTURE, "scenes=1", f"out={root}", "append=true"]) == 0
    meta = json.loads((root / "capture.json").read_text())
    assert meta["scenes"][-1] == "scene_000002" and meta["seeds"] == [0, 1, 2]
    assert main([*CAPTURE[:3], "image_size=64", "scenes=1", f"out={root}", "append=true"]) == 2
    assert "other settings" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.txt").write_text("x")
    assert main([*CAPTURE, "scenes=1", f"out={other}"]) == 2
    assert [p.name for p in other.iterdir()] == ["a.txt"]
    assert main([*CAPTURE, "env=metaworld/hammer", "scenes=1", f"out={tmp_path / 'mw'}"]) == 2


def _azimuths(poses, center) -> np.ndarray:
    eyes = np.array([p[:3, 3] for p in poses]) - np.asarray(center)
    return np.degrees(np.arctan2(eyes[:, 1], eyes[:, 0]))


def test_azimuth_span_keeps_views_on_one_arc():
    from envs.cameras import hemisphere_poses

    center = np.zeros(3)
    for seed in range(20):
        poses = hemisphere_poses(6, center, np.random.default_rng(seed), azimuth_span=90, target_jitter=0)
        az = _azimuths(poses, center)
        offsets = (az - az[0] + 180) % 360 - 180  # signed, relative to the first view
        # evenly spread over the arc: 15 degrees apart, +-0.3 of a step of jitter on each view
        assert np.all(offsets[1:] > 0) and offsets.max() < 90 and np.all(np.diff(offsets) > 15 * 0.39)
    # the default surrounds the scene: the same draws as before the option existed
    az = _azimuths(hemisphere_poses(4, center, np.random.default_rng(0), target_jitter=0), center)
    gaps = np.sort((az - az[0]) % 360)  # 90 degrees apart, each view +-27
    assert np.diff(gaps).min() > 36 and gaps[-1] > 216


def test_capture_refuses_an_azimuth_span_outside_0_360(tmp_path, capsys):
    out = tmp_path / "arc"
    assert main([*CAPTURE, "scenes=1", "azimuth_span=0", f"out={out}"]) == 2
    assert "azimuth_span=0" in capsys.readouterr().err and not out.exists()


def test_random_lighting_captures_the_same_scenes_in_another_light(capture_dir, tmp_path):
    # The depth section's lighting test pairs each lit view with the standard one of the same seed.
    lit = tmp_path / "lit"
    assert main([*CAPTURE, "scenes=2", "random_lighting=true", f"out={lit}"]) == 0
    for plain_folder, lit_folder in zip(scene_folders(capture_dir), scene_folders(lit), strict=True):
        plain, lit_scene = load_scene(plain_folder), load_scene(lit_folder)
        for a, b in zip(plain.views, lit_scene.views, strict=True):
            assert np.array_equal(a.depth, b.depth) and np.array_equal(a.cam2world, b.cam2world)
            assert np.abs(a.rgb.astype(int) - b.rgb.astype(int)).mean() > 1  # the light differs
