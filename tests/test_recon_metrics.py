"""Each metric against hand-computed values on small synthetic inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recon.metrics import (
    average,
    cloud_metrics,
    format_table,
    inlier_ratio,
    pose_auc,
    relative_error,
    relative_pose_errors,
    set_metrics,
)


def rot_z(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])


def pose(R=None, t=(0, 0, 0)) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = np.eye(3) if R is None else R, t
    return T


@pytest.fixture
def scene():
    """Three views: camera-frame points, poses in view 0's frame, world points (metres)."""
    rng = np.random.default_rng(0)
    c2w = np.stack([pose(), pose(rot_z(30), (0.5, 0.1, 0.0)), pose(rot_z(-20), (-0.3, 0.4, 0.1))])
    cam = np.concatenate([rng.uniform(-0.5, 0.5, (3, 4, 5, 2)), rng.uniform(0.5, 2.0, (3, 4, 5, 1))], -1)
    world = np.einsum("vij,vhwj->vhwi", c2w[:, :3, :3], cam) + c2w[:, None, None, :3, 3]
    valid = np.ones((3, 4, 5), bool)
    valid[1, 0] = False
    return cam, world, c2w, valid


def test_identity_prediction_scores_perfectly_at_any_scale(scene):
    cam, world, c2w, valid = scene
    perfect = {
        "scale_rel": 0.0,
        "points_rel": 0.0,
        "points_tau": 100.0,
        "pose_auc5": 100.0,
        "depth_rel": 0.0,
        "depth_tau": 100.0,
    }
    got = set_metrics(world, cam, 1.0, c2w, world, cam, c2w, valid)
    assert got == pytest.approx(perfect, abs=1e-9)
    # The geometry is compared up to scale; the scale m carries the metres.
    s = 0.37
    shrunk = c2w.copy()
    shrunk[:, :3, 3] *= s
    got = set_metrics(world * s, cam * s, 1 / s, shrunk, world, cam, c2w, valid)
    assert got == pytest.approx(perfect, abs=1e-9)


def test_scale_rel_is_the_relative_error_of_the_metric_size(scene):
    cam, world, c2w, valid = scene
    assert set_metrics(world, cam, 1.1, c2w, world, cam, c2w, valid)["scale_rel"] == pytest.approx(0.1)
    assert set_metrics(world * 2, cam * 2, 0.4, c2w, world, cam, c2w, valid)["scale_rel"] == pytest.approx(0.2)


def test_relative_error_and_inlier_ratio_by_hand():
    gt = np.array([[1.0, 0, 0], [0, 2.5, 0]])
    pred = np.array([[1.1, 0, 0], [0, 2.0, 0]])
    valid = np.array([True, True])
    assert relative_error(pred, gt, valid) == pytest.approx((0.1 / 1 + 0.5 / 2.5) / 2)
    assert inlier_ratio(pred, gt, valid) == 0.0  # ratios 1.1 and 1.25
    pred = np.array([[1.02, 0, 0], [0, 2.5 / 1.04, 0]])
    assert inlier_ratio(pred, gt, valid) == 50.0  # 1.02 < 1.03, 1.04 is not
    assert inlier_ratio(pred, gt, np.array([True, False])) == 100.0
    # the tau metric compares lengths only: a point rotated about the origin is an inlier
    assert inlier_ratio(np.array([[0, 1.0, 0]]), np.array([[1.0, 0, 0]]), np.array([True])) == 100.0
    # scalars (depth): |z_hat - z| / z
    assert relative_error(np.array([2.2, 1.0]), np.array([2.0, 1.0]), np.array([True, True])) == pytest.approx(0.05)
    assert math.isnan(relative_error(pred, gt, np.array([False, False])))


def test_depth_metrics_use_camera_z_after_normalisation(scene):
    cam, world, c2w, valid = scene
    # Stretch every camera-frame z of view 2 by 2 %: depth rel of that view is 0.02 exactly if the
    # normalisation (computed from the world points, left unchanged) is the same on both sides.
    pred_cam = cam.copy()
    pred_cam[2, ..., 2] *= 1.02
    got = set_metrics(world, pred_cam, 1.0, c2w, world, cam, c2w, valid)
    assert got["depth_rel"] == pytest.approx(0.02 / 3)  # mean over 3 views
    assert got["depth_tau"] == pytest.approx(100.0)  # 1.02 < 1.03
    pred_cam[2, ..., 2] *= 1.02  # now 1.0404: an outlier everywhere in view 2
    assert set_metrics(world, pred_cam, 1.0, c2w, world, cam, c2w, valid)["depth_tau"] == pytest.approx(200 / 3)


def test_pose_auc_of_known_errors():
    # one pair at 0.5, one at 2.5 and one at 7 degrees: bins [0,1): 1, [2,3): 1, beyond 5: 1
    # cumulative [1/3, 1/3, 2/3, 2/3, 2/3], mean 0.5333 -> 53.33
    assert pose_auc(np.array([0.5, 2.5, 7.0]), np.zeros(3)) == pytest.approx(100 * (2 / 3 + 2) / 5)
    assert pose_auc(np.zeros(4), np.zeros(4)) == 100.0
    assert pose_auc(np.array([1.0]), np.array([6.0])) == 0.0  # max of the two


def test_a_known_rotation_error_gives_the_known_auc(scene):
    cam, world, c2w, valid = scene
    pred = c2w.copy()
    pred[1, :3, :3] = c2w[1, :3, :3] @ rot_z(2.5)  # view 1 turned 2.5 degrees about its z axis
    rot, trans = relative_pose_errors(pred, c2w)
    # pairs (0,1), (0,2), (1,2): view 1's error is 2.5 degrees in both of its pairs; the
    # direction from view 1 to view 2, seen from view 1, turns by at most that much.
    assert rot == pytest.approx([2.5, 0.0, 2.5], abs=1e-9)
    assert trans[0] == pytest.approx(0.0, abs=1e-6) and trans[1] == pytest.approx(0.0, abs=1e-6)
    assert 0 < trans[2] <= 2.5 + 1e-9
    # bins: [0,1): 1 pair, [2,3): 2 pairs -> cumulative [1/3, 1/3, 1, 1, 1] -> 73.33
    expected = 100 * (1 / 3 + 1 / 3 + 1 + 1 + 1) / 5
    assert set_metrics(world, cam, 1.0, pred, world, cam, c2w, valid)["pose_auc5"] == pytest.approx(expected)


def test_pose_extras_of_a_known_rotation_error(scene):
    from recon.metrics import pose_extras

    cam, world, c2w, valid = scene
    pred = c2w.copy()
    pred[1, :3, :3] = c2w[1, :3, :3] @ rot_z(12.5)  # beyond AUC@5's reach, inside AUC@30's
    extras = pose_extras(pred, c2w)
    assert extras["rot_err"] == pytest.approx(12.5, abs=1e-9)  # median of 12.5, 0 and 12.5
    rot, trans = relative_pose_errors(pred, c2w)
    err = np.maximum(rot, trans)  # the pair (0,2) is exact, the two others 12.5 degrees off
    assert err[1] == pytest.approx(0, abs=1e-6) and err[0] == pytest.approx(12.5) and err[2] == pytest.approx(12.5)
    # 30 bins: the exact pair in all 30, the two others from bin 13 on: (30 + 2 * 18) / 90
    assert extras["pose_auc30"] == pytest.approx(100 * (30 + 2 * 18) / 90)


def test_translation_direction_error_counts():
    gt = np.stack([pose(), pose(t=(1.0, 0, 0))])
    pred = np.stack([pose(), pose(t=(math.cos(math.radians(10)), math.sin(math.radians(10)), 0))])
    rot, trans = relative_pose_errors(pred, gt)
    assert rot == pytest.approx([0.0]) and trans == pytest.approx([10.0])
    assert pose_auc(rot, trans) == 0.0
    pred[1, :3, 3] *= 5  # the length of the translation does not matter, its direction does
    assert relative_pose_errors(pred, gt)[1] == pytest.approx([10.0])
    pred[1, :3, 3] = 0  # no direction at all: the worst error
    assert relative_pose_errors(pred, gt)[1] == pytest.approx([90.0])


def test_a_reversed_translation_is_not_an_error_as_in_mapanything():
    gt = np.stack([pose(), pose(t=(1.0, 0, 0))])
    pred = np.stack([pose(), pose(t=(-1.0, 0, 0))])  # 180 degrees off: folded to 0
    rot, trans = relative_pose_errors(pred, gt)
    assert trans == pytest.approx([0.0]) and pose_auc(rot, trans) == 100.0
    pred[1, :3, 3] = (-math.cos(math.radians(3)), math.sin(math.radians(3)), 0)  # 177 degrees: 3
    assert relative_pose_errors(pred, gt)[1] == pytest.approx([3.0])
    pred[1, :3, 3] = (0, 1.0, 0)  # perpendicular: the largest folded error
    assert relative_pose_errors(pred, gt)[1] == pytest.approx([90.0])


def test_a_set_with_a_view_without_ground_truth_is_nan_and_left_out(scene):
    cam, world, c2w, valid = scene
    some = valid.copy()
    some[1] = False  # view 1 has no valid pixel
    got = set_metrics(world, cam, 1.0, c2w, world, cam, c2w, some)
    assert all(math.isnan(v) for v in got.values())
    perfect = set_metrics(world, cam, 1.0, c2w, world, cam, c2w, valid)
    assert average([got, perfect])["points_rel"] == pytest.approx(0.0, abs=1e-12)


def test_chamfer_and_fscore_of_shifted_clouds():
    grid = np.stack(np.meshgrid(*[np.arange(5) * 0.05] * 3, indexing="ij"), -1).reshape(-1, 3)  # 5 cm apart
    shifted = grid + [0.004, 0, 0]
    got = cloud_metrics(shifted, grid, threshold=0.01)
    assert got["chamfer"] == pytest.approx(0.004) and got["fscore"] == pytest.approx(100.0)
    got = cloud_metrics(grid + [0.02, 0, 0], grid, threshold=0.01)
    assert got["chamfer"] == pytest.approx(0.02) and got["fscore"] == 0.0
    # half the prediction far away: precision 1/2, recall 1 -> F = 2/3
    half = np.concatenate([grid, grid + [10.0, 0, 0]])
    got = cloud_metrics(half, grid)
    assert got["precision"] == pytest.approx(0.5) and got["recall"] == 1.0
    assert got["fscore"] == pytest.approx(100 * 2 / 3)


def test_a_perfect_cloud_scores_100_only_unsampled():
    """eval-recon scores every point by default: two independently sampled copies of the same
    cloud lose each other's points (here 1.5 cm apart, beyond the 1 cm threshold)."""
    from recon.commands import EvalReconConfig
    from recon.evaluate import sample_points

    grid = np.stack(np.meshgrid(*[np.arange(20) * 0.015] * 3, indexing="ij"), -1).reshape(-1, 3)
    rng = np.random.default_rng(0)
    assert EvalReconConfig().max_points is None
    every = cloud_metrics(sample_points(grid, None, rng), sample_points(grid, None, rng))
    assert every["fscore"] == 100.0 and every["chamfer"] == 0.0
    capped = cloud_metrics(sample_points(grid, 6000, rng), sample_points(grid, 6000, rng))
    assert capped["fscore"] == pytest.approx(75.0, abs=3.0)  # a point's twin is kept 6000/8000 of the time


def test_average_skips_undefined_values_and_table_prints():
    rows = [{"scale_rel": 0.1, "pose_auc5": math.nan}, {"scale_rel": 0.3, "pose_auc5": 50.0}]
    avg = average(rows)
    assert avg["scale_rel"] == pytest.approx(0.2) and avg["pose_auc5"] == 50.0
    table = format_table({"2 views": avg})
    assert "Scale rel" in table and "| 2 views | 0.200 | 50.0 |" in table


def test_standard_error_is_the_spread_of_the_mean_over_sets():
    from recon.metrics import standard_error

    rows = [{"fscore": 30.0, "pose_auc5": math.nan}, {"fscore": 50.0, "pose_auc5": 40.0}, {"fscore": 40.0}]
    se = standard_error(rows)
    assert se["fscore"] == pytest.approx(10.0 / math.sqrt(3))  # sample s.d. 10 over 3 sets
    assert math.isnan(se["pose_auc5"])  # one defined set: no spread to estimate


def test_monocular_depth_metrics_by_hand():
    """Two valid pixels (gt 1 and 2 m, predicted 1.25 and 1.5 m), one invalid (gt 0)."""
    from recon.metrics import DEPTH_METRICS, depth_metrics

    m = depth_metrics(np.array([1.25, 1.5, 9.0]), np.array([1.0, 2.0, 0.0]))
    g = np.log([1.25, 0.75])  # log d_hat - log d
    expected = {
        "d1": 0.0,  # ratios 1.25 (exactly: not below 1.25) and 4/3
        "d2": 1.0,
        "d3": 1.0,
        "abs_rel": (0.25 / 1 + 0.5 / 2) / 2,
        "sq_rel": (0.25**2 / 1 + 0.5**2 / 2) / 2,
        "rmse": math.sqrt((0.25**2 + 0.5**2) / 2),
        "rmse_log": math.sqrt((g**2).mean()),
        "log10": (abs(math.log10(1.25)) + abs(math.log10(0.75))) / 2,
        "silog": math.sqrt((g**2).mean() - 0.5 * g.mean() ** 2),
    }
    assert set(m) == set(DEPTH_METRICS)
    for k, v in expected.items():
        assert m[k] == pytest.approx(v, rel=1e-12), k
    assert math.isnan(depth_metrics(np.ones(3), np.zeros(3))["d1"])  # no valid pixel


def test_silog_loss_equals_its_direct_computation():
    import torch

    from recon.losses import silog_loss

    torch.manual_seed(0)
    pred, target = torch.rand(2, 8, 8) + 0.1, torch.rand(2, 8, 8) + 0.1
    valid = torch.rand(2, 8, 8) > 0.3
    triples = zip(pred.flatten().tolist(), target.flatten().tolist(), valid.flatten().tolist(), strict=True)
    g = [math.log(t) - math.log(p) for p, t, v in triples if v]
    mean, mean_sq = sum(g) / len(g), sum(x * x for x in g) / len(g)
    assert silog_loss(pred, target, valid).item() == pytest.approx(math.sqrt(mean_sq - 0.5 * mean**2), rel=1e-5)
