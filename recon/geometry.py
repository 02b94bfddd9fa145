"""Camera geometry of the factored output, in torch (batched over any leading dimensions).

Conventions: OpenCV cameras (x right, y down, z forward), pixel centres at integer coordinates,
camera-to-world poses, unit quaternions stored scalar-last (x, y, z, w). A view's point at a
pixel is `depth_along_ray * ray` in its camera frame and `R (depth * ray) + t` in the world
(view 0's camera frame); metric points multiply that by the scale m.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ---- rotations -----------------------------------------------------------------------------


def quat_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (..., 4) scalar-last -> rotation matrices (..., 3, 3)."""
    x, y, z, w = F.normalize(q, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - z * w),
            2 * (x * z + y * w),
            2 * (x * y + z * w),
            1 - 2 * (x * x + z * z),
            2 * (y * z - x * w),
            2 * (x * z - y * w),
            2 * (y * z + x * w),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).unflatten(-1, (3, 3))


def matrix_to_quat(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) -> unit quaternions (..., 4) scalar-last, w >= 0.

    Of the four algebraically equivalent formulas the one with the largest denominator is used
    per matrix, so the result is accurate for every rotation (Shepperd's method)."""
    m = R.flatten(-2)
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m.unbind(-1)
    candidates = torch.stack(
        [
            torch.stack([m21 - m12, m02 - m20, m10 - m01, 1 + m00 + m11 + m22], -1),
            torch.stack([1 + m00 - m11 - m22, m01 + m10, m02 + m20, m21 - m12], -1),
            torch.stack([m01 + m10, 1 - m00 + m11 - m22, m12 + m21, m02 - m20], -1),
            torch.stack([m02 + m20, m12 + m21, 1 - m00 - m11 + m22, m10 - m01], -1),
        ],
        dim=-2,
    )  # row k is 4 q_k q for k = w, x, y, z: exact up to scale, well conditioned when q_k is large
    diag = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    best = diag.argmax(-1, keepdim=True)
    q = torch.gather(candidates, -2, best[..., None].expand(*best.shape[:-1], 1, 4)).squeeze(-2)
    q = F.normalize(q, dim=-1)
    return torch.where(q[..., 3:] < 0, -q, q)


def quat_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product a * b of scalar-last quaternions (..., 4): the rotation b, then a."""
    (ax, ay, az, aw), (bx, by, bz, bw) = a.unbind(-1), b.unbind(-1)
    return torch.stack(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ],
        dim=-1,
    )


def quat_conjugate(q: torch.Tensor) -> torch.Tensor:
    """The inverse rotation of unit quaternions (..., 4) scalar-last."""
    return torch.cat([-q[..., :3], q[..., 3:]], dim=-1)


def rotation_angle(R: torch.Tensor) -> torch.Tensor:
    """Angle (radians) of rotation matrices (..., 3, 3), accurate near 0 and pi."""
    # atan2(|axis * sin|, cos) avoids acos's loss of precision at small angles.
    skew = torch.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1)
    trace = R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2]
    return torch.atan2(skew.norm(dim=-1), trace - 1)


# ---- poses ---------------------------------------------------------------------------------


def pose_matrix(quat: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
    """(..., 4) quaternions and (..., 3) translations -> (..., 4, 4) camera-to-world matrices."""
    T = torch.zeros(*trans.shape[:-1], 4, 4, dtype=trans.dtype, device=trans.device)
    T[..., :3, :3] = quat_to_matrix(quat).to(trans.dtype)
    T[..., :3, 3] = trans
    T[..., 3, 3] = 1
    return T


def invert_pose(T: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid transforms (..., 4, 4), in closed form."""
    R, t = T[..., :3, :3], T[..., :3, 3:]
    out = torch.zeros_like(T)
    out[..., :3, :3] = R.transpose(-1, -2)
    out[..., :3, 3:] = -R.transpose(-1, -2) @ t
    out[..., 3, 3] = 1
    return out


def relative_to_first(cam2world: torch.Tensor) -> torch.Tensor:
    """Poses (..., V, 4, 4) expressed in the frame of view 0: inv(T_0) @ T_i."""
    return invert_pose(cam2world[..., :1, :, :]) @ cam2world


# ---- left-right mirroring -------------------------------------------------------------------
# An image flipped left-right is the view of the mirrored scene from the mirrored camera: in
# each camera frame x -> -x (S = diag(-1, 1, 1)), and with the world mirrored the same way a
# camera-to-world pose P becomes S P S. Mirroring twice is the identity, so one set of functions
# maps ground truth to the mirrored scene (training augmentation) and a prediction for mirrored
# images back to the originals (test-time flip).


def mirror_pose(T: torch.Tensor) -> torch.Tensor:
    """Poses (..., 4, 4) of the mirrored scene: S T S (rotation S R S, translation S t)."""
    s = torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=T.dtype, device=T.device)
    return T * s[:, None] * s[None, :]


def mirror_quat(q: torch.Tensor) -> torch.Tensor:
    """Scalar-last quaternions (..., 4) of S R S: a rotation about axis S a by the opposite angle."""
    return q * torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=q.dtype, device=q.device)


def mirror_intrinsics(K: torch.Tensor, width: int) -> torch.Tensor:
    """Intrinsics (..., 3, 3) of the flipped image (pixel u -> width - 1 - u): cx -> width - 1 - cx."""
    K = K.clone()
    K[..., 0, 2] = width - 1 - K[..., 0, 2]
    K[..., 0, 1] = -K[..., 0, 1]
    return K


# ---- rays, depth and points ----------------------------------------------------------------


def pixel_grid(height: int, width: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """(H, W, 3) homogeneous pixel coordinates (u, v, 1), pixel centres at integers."""
    v, u = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device), torch.arange(width, dtype=dtype, device=device), indexing="ij"
    )
    return torch.stack([u, v, torch.ones_like(u)], dim=-1)


def rays_from_intrinsics(K: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Intrinsics (..., 3, 3) -> unit ray directions (..., H, W, 3) in the camera frame."""
    pix = pixel_grid(height, width, dtype=K.dtype, device=K.device)
    dirs = pix @ torch.linalg.inv(K)[..., None, :, :].transpose(-1, -2)
    return F.normalize(dirs, dim=-1)


def fovy_deg(K: torch.Tensor, height: int) -> torch.Tensor:
    """Vertical field of view (degrees) of intrinsics (..., 3, 3) for images `height` pixels high."""
    return torch.rad2deg(2 * torch.atan(0.5 * height / K[..., 1, 1]))


def intrinsics_from_rays(rays: torch.Tensor) -> torch.Tensor:
    """Pinhole intrinsics (..., 3, 3) that best explain ray directions (..., H, W, 3).

    Each axis is a least-squares line fit: u = fx * (x / z) + cx and v = fy * (y / z) + cy."""
    h, w = rays.shape[-3:-1]
    pix = pixel_grid(h, w, dtype=rays.dtype, device=rays.device)
    xz = rays[..., 0] / rays[..., 2].clamp(min=1e-6)
    yz = rays[..., 1] / rays[..., 2].clamp(min=1e-6)

    def fit(a: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, target = a.flatten(-2), target.flatten().expand_as(a.flatten(-2))
        am, tm = a.mean(-1, keepdim=True), target.mean(-1, keepdim=True)
        slope = ((a - am) * (target - tm)).sum(-1) / ((a - am) ** 2).sum(-1).clamp(min=1e-12)
        return slope, (tm - slope[..., None] * am).squeeze(-1)

    fx, cx = fit(xz, pix[..., 0])
    fy, cy = fit(yz, pix[..., 1])
    K = torch.zeros(*rays.shape[:-3], 3, 3, dtype=rays.dtype, device=rays.device)
    K[..., 0, 0], K[..., 0, 2], K[..., 1, 1], K[..., 1, 2], K[..., 2, 2] = fx, cx, fy, cy, 1
    return K


def z_to_depth_along_ray(z: torch.Tensor, rays: torch.Tensor) -> torch.Tensor:
    """Depth images z (..., H, W) -> distance along the unit rays (..., H, W)."""
    return z / rays[..., 2].clamp(min=1e-6)


def camera_points(rays: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """Unit rays (..., H, W, 3) and depth along them (..., H, W) -> camera-frame points."""
    return rays * depth[..., None]


def world_points(rays: torch.Tensor, depth: torch.Tensor, cam2world: torch.Tensor) -> torch.Tensor:
    """Points (..., H, W, 3) in the world frame of poses (..., 4, 4): R (d r) + t."""
    # One (H*W, 3) x (3, 3) product per view, not H*W tiny 3x3 products.
    pts = camera_points(rays, depth).flatten(-3, -2) @ cam2world[..., :3, :3].transpose(-1, -2)
    return (pts + cam2world[..., None, :3, 3]).unflatten(-2, rays.shape[-3:-1])


def mean_distance(points: torch.Tensor, valid: torch.Tensor, dims: int = 3) -> torch.Tensor:
    """Mean distance to the origin of the valid points, over the last `dims` dimensions before
    the coordinates (e.g. views, rows, columns for one scale per set)."""
    norms = points.norm(dim=-1) * valid
    reduce = tuple(range(-dims, 0))
    return norms.sum(reduce) / valid.sum(reduce).clamp(min=1)


def log_compress(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """x / |x| * log(1 + |x|) along `dim`: large distances count less than near ones."""
    norm = x.norm(dim=dim, keepdim=True)
    return x / norm.clamp(min=1e-8) * torch.log1p(norm)
