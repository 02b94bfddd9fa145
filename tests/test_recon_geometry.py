"""Geometry of the factored output: rotations, rays, depth, poses -> points and back."""

from __future__ import annotations

import numpy as np
import torch

from envs.cameras import backproject, intrinsics, look_at, project
from recon import geometry
from recon.losses import Targets
from recon.modeling_recon import ReconOutput


def random_rotations(n: int, seed: int = 0) -> torch.Tensor:
    q = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return geometry.quat_to_matrix(q)


def test_quaternion_matrix_round_trip_including_half_turns():
    R = random_rotations(200)
    # Half turns (w = 0) and near-identity rotations are where naive formulas lose precision.
    half = torch.tensor([[[1.0, 0, 0], [0, -1, 0], [0, 0, -1]], [[-1.0, 0, 0], [0, -1, 0], [0, 0, 1]]]).double()
    R = torch.cat([R, half, torch.eye(3, dtype=torch.float64)[None]])
    q = geometry.matrix_to_quat(R)
    assert torch.allclose(q.norm(dim=-1), torch.ones(len(q), dtype=torch.float64))
    assert (q[:, 3] >= 0).all()
    assert torch.allclose(geometry.quat_to_matrix(q), R, atol=1e-12)
    assert torch.allclose(geometry.quat_to_matrix(-q), R, atol=1e-12)  # q and -q: one rotation
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand_as(R), atol=1e-12)


def test_rotation_angle_of_known_rotations():
    for deg in (0.001, 2.5, 90.0, 179.9):
        a = np.radians(deg)
        R = torch.tensor([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]], dtype=torch.float64)
        assert abs(np.degrees(geometry.rotation_angle(R).item()) - deg) < 1e-9


def test_rays_and_intrinsics_round_trip():
    K = torch.tensor([[70.0, 0, 30.5], [0, 65.0, 25.0], [0, 0, 1]], dtype=torch.float64)
    rays = geometry.rays_from_intrinsics(K, 48, 64)
    assert rays.shape == (48, 64, 3)
    assert torch.allclose(rays.norm(dim=-1), torch.ones(48, 64, dtype=torch.float64))
    # the ray through the principal point looks straight ahead; pixel (0, 0) up and left
    assert torch.allclose(rays[25, 30], torch.tensor([-0.5 / 70, 0, 1], dtype=torch.float64).div(np.hypot(1, 0.5 / 70)))
    assert (rays[0, 0, :2] < 0).all()
    assert torch.allclose(geometry.intrinsics_from_rays(rays), K, atol=1e-9)


def _camera(eye, target=(0.0, 0.0, 0.0)) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = look_at(np.array(eye, float), np.array(target, float)), eye
    return T


def test_ground_truth_points_match_envs_backprojection_and_project_back():
    rng = np.random.default_rng(0)
    h, w = 24, 32
    K = intrinsics(50.0, h, w)
    poses = np.stack([_camera((0.8, 0.1, 0.5)), _camera((-0.2, 0.9, 0.6)), _camera((0.1, -0.7, 0.9))])
    depth = rng.uniform(0.4, 1.2, (3, h, w)).astype(np.float32)
    depth[1, :3] = 0.0  # no surface
    depth[2, 5, 5] = np.nan  # invalid measurement
    tgt = Targets.from_views(
        torch.from_numpy(depth)[None], torch.from_numpy(np.stack([K] * 3))[None], torch.from_numpy(poses)[None]
    )
    rel = np.linalg.inv(poses[0]) @ poses
    assert np.allclose(tgt.cam2world[0].double().numpy(), rel, atol=1e-6)
    assert not tgt.valid[0, 1, :3].any() and not tgt.valid[0, 2, 5, 5] and tgt.valid.sum() == 3 * h * w - 3 * w - 1
    points = tgt.points()[0].double().numpy()
    for v in range(3):
        expected = backproject(depth[v], K, rel[v])  # the envs reference, NaN where invalid
        ok = tgt.valid[0, v].numpy()
        assert np.allclose(points[v][ok], expected[ok], atol=1e-5)
        # and back: projecting the world points into their camera gives the pixel and its depth
        uvz = project(points[v][ok], K, rel[v])
        vv, uu = np.nonzero(ok)
        assert np.allclose(uvz[:, 0], uu, atol=1e-4) and np.allclose(uvz[:, 1], vv, atol=1e-4)
        assert np.allclose(uvz[:, 2], depth[v][ok], atol=1e-5)


def test_factored_output_reproduces_metric_points_and_poses():
    """rays, depth along the ray, quaternion + translation and m give m (R (d r) + t)."""
    h, w = 16, 20
    K = torch.from_numpy(intrinsics(60.0, h, w))
    poses = torch.from_numpy(np.stack([_camera((0.5, 0.5, 0.5)), _camera((-0.6, 0.2, 0.4))]))
    depth = torch.rand(1, 2, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.5
    tgt = Targets.from_views(depth, K.expand(1, 2, 3, 3), poses[None])
    m = 2.5
    out = ReconOutput(
        rays=tgt.rays,
        depth=tgt.depth / m,
        conf=torch.ones(1, 2, h, w),
        mask_logits=torch.ones(1, 2, h, w),
        quat=geometry.matrix_to_quat(tgt.cam2world[..., :3, :3].double()).float(),
        trans=tgt.cam2world[..., :3, 3] / m,
        scale=torch.tensor([m]),
    )
    assert torch.allclose(out.points(metric=True), tgt.points(), atol=1e-5)
    assert torch.allclose(out.points(), tgt.points() / m, atol=1e-5)
    assert torch.allclose(out.cam2world(metric=True), tgt.cam2world, atol=1e-5)
    assert torch.allclose(out.depth_z(metric=True), torch.where(tgt.valid, depth.float(), 0.0), atol=1e-5)


def _mirror_points(points: torch.Tensor) -> torch.Tensor:
    """(..., H, W, 3) points of a mirrored scene at the flipped pixels -> the original's."""
    return points.flip(-2) * torch.tensor([-1.0, 1.0, 1.0], dtype=points.dtype)


def test_a_flipped_image_is_the_mirrored_scene_from_the_mirrored_camera():
    h, w = 12, 18
    K = torch.from_numpy(intrinsics(55.0, h, w))
    K[0, 2], K[1, 2] = 7.3, 5.1  # off-centre: cx must become w - 1 - cx
    poses = torch.from_numpy(np.stack([_camera((0.5, 0.4, 0.6)), _camera((-0.6, 0.3, 0.5)), _camera((0.1, -0.7, 0.8))]))
    depth = torch.rand(1, 3, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) + 0.5
    tgt = Targets.from_views(depth, K.expand(1, 3, 3, 3), poses[None])
    flipped = Targets.from_views(
        depth.flip(-1), geometry.mirror_intrinsics(K, w).expand(1, 3, 3, 3), geometry.mirror_pose(poses)[None]
    )
    # every pixel of the flipped views sees the mirror image of the point it saw before
    assert torch.allclose(_mirror_points(flipped.points().double()), tgt.points().double(), atol=1e-5)
    assert torch.allclose(_mirror_points(flipped.rays.double()), tgt.rays.double(), atol=1e-6)
    # mirroring is an involution, and the quaternion form agrees with the matrix form
    assert torch.allclose(geometry.mirror_pose(geometry.mirror_pose(poses)), poses)
    assert torch.allclose(geometry.mirror_intrinsics(geometry.mirror_intrinsics(K, w), w), K)
    R = random_rotations(50, seed=3)
    S = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    q = geometry.matrix_to_quat(R)
    assert torch.allclose(geometry.quat_to_matrix(geometry.mirror_quat(q)), S @ R @ S, atol=1e-12)


def _output_of(tgt: Targets, m: float) -> ReconOutput:
    shape = tgt.depth.shape
    return ReconOutput(
        rays=tgt.rays,
        depth=tgt.depth / m,
        conf=torch.rand(shape, generator=torch.Generator().manual_seed(4)) + 1,
        mask_logits=torch.randn(shape, generator=torch.Generator().manual_seed(5)),
        quat=geometry.matrix_to_quat(tgt.cam2world[..., :3, :3].double()).float(),
        trans=tgt.cam2world[..., :3, 3] / m,
        scale=torch.tensor([m]),
    )


def test_a_prediction_for_flipped_images_maps_back_and_averages():
    """The test-time flip: the exact prediction for the mirrored scene, mirrored back, is the
    exact prediction for the scene; averaging it with that leaves it unchanged."""
    h, w = 10, 14
    K = torch.from_numpy(intrinsics(50.0, h, w))
    poses = torch.from_numpy(np.stack([_camera((0.6, 0.2, 0.5)), _camera((-0.3, 0.7, 0.6))]))
    depth = torch.rand(1, 2, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(6)) + 0.5
    tgt = Targets.from_views(depth, K.expand(1, 2, 3, 3), poses[None])
    flipped = Targets.from_views(
        depth.flip(-1), geometry.mirror_intrinsics(K, w).expand(1, 2, 3, 3), geometry.mirror_pose(poses)[None]
    )
    plain, back = _output_of(tgt, 1.7), _output_of(flipped, 1.9).mirrored()
    assert torch.allclose(back.points(metric=True), tgt.points(), atol=1e-5)
    assert torch.allclose(back.cam2world(metric=True), tgt.cam2world, atol=1e-5)
    assert torch.allclose(back.mirrored().mirrored().quat, back.quat)
    both = ReconOutput.average([plain, back])
    assert torch.allclose(both.points(metric=True), tgt.points(), atol=1e-5)
    assert torch.allclose(both.cam2world(metric=True), tgt.cam2world, atol=1e-5)
    assert torch.allclose(both.scale, torch.tensor([1.8]))
    # two rotations 2 degrees either side of the truth average to it (q and -q alike)
    turn = np.radians(2.0)
    rz = lambda a: torch.tensor([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])  # noqa: E731
    a, b = _output_of(tgt, 1.0), _output_of(tgt, 1.0)
    R1 = tgt.cam2world[0, 1, :3, :3].double()
    a.quat = geometry.matrix_to_quat(torch.stack([torch.eye(3).double(), rz(turn).double() @ R1]))[None].float()
    b.quat = -geometry.matrix_to_quat(torch.stack([torch.eye(3).double(), rz(-turn).double() @ R1]))[None].float()
    mean = ReconOutput.average([a, b]).cam2world()[0, 1, :3, :3].double()
    assert np.degrees(geometry.rotation_angle(mean.T @ R1).item()) < 1e-3


def test_mean_distance_and_log_compression():
    points = torch.tensor([[[3.0, 4.0, 0.0], [0.0, 0.0, 1.0], [9.0, 9.0, 9.0]]])
    valid = torch.tensor([[True, True, False]])
    assert torch.allclose(geometry.mean_distance(points, valid, dims=1), torch.tensor([3.0]))
    x = torch.tensor([[3.0, 4.0, 0.0]])
    assert torch.allclose(geometry.log_compress(x), x / 5 * np.log(6.0))
    assert torch.equal(geometry.log_compress(torch.zeros(1, 3)), torch.zeros(1, 3))


def test_field_of_view_of_rendered_cameras():
    for fovy in (40.0, 50.0, 75.0):
        K = torch.from_numpy(intrinsics(fovy, 96, 128))
        assert abs(geometry.fovy_deg(K, 96).item() - fovy) < 1e-9
