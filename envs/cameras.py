"""Cameras: look-at placement, intrinsics and extrinsics (OpenCV convention), and rendering.

MuJoCo cameras look along their -z axis with +y up; the toolkit's convention is OpenCV's
(x right, y down, z forward), so camera-to-world matrices are MuJoCo's frame times
diag(1, -1, -1). MuJoCo renders a symmetric frustum of vertical field of view `fovy` with
square pixels, so fx = fy = (H / 2) / tan(fovy / 2) and the principal point is the image
centre, ((W - 1) / 2, (H - 1) / 2) with pixel centres at integer coordinates.

`CameraRig` owns one `mujoco.Renderer` per image size and renders the RGB, depth (metric z
in the camera frame, float32 metres, 0 where no surface was hit) and segmentation (MuJoCo
body id per pixel, -1 where no surface was hit) of a set of named cameras. Shadows,
reflections and multisampling are off by default: with Mesa's software rasteriser they
dominate the render time.
"""

from __future__ import annotations

import atexit
import math
import weakref
from dataclasses import dataclass

import mujoco
import numpy as np

from pixio_robot.errors import PixioError

MIN_SIZE, MAX_SIZE = 16, 2048
_MUJOCO_TO_OPENCV = np.diag([1.0, -1.0, -1.0])
_OPEN_RIGS: weakref.WeakSet = weakref.WeakSet()


def _close_open_rigs() -> None:
    # Renderers freed by the garbage collector after EGL has shut down print errors at exit:
    # close the ones still open first. Registered after the first renderer exists, so after
    # MuJoCo's own EGL teardown, and atexit runs handlers last-registered first.
    for rig in list(_OPEN_RIGS):
        rig.close()


@dataclass(frozen=True)
class CameraInfo:
    """A camera at one moment: `K` (3, 3) in pixels and `cam2world` (4, 4), OpenCV convention."""

    name: str
    height: int
    width: int
    K: np.ndarray
    cam2world: np.ndarray


def look_at(position, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world rotation (OpenCV axes as columns) of a camera at `position` facing `target`."""
    position, target, up = (np.asarray(v, dtype=np.float64) for v in (position, target, up))
    forward = target - position
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-6:  # looking straight along `up`: any right vector will do
        right = np.cross(forward, [1.0, 0.0, 0.0] if abs(forward[0]) < 0.9 else [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    return np.stack([right, down, forward], axis=1)


def mujoco_xyaxes(position, target, up=(0.0, 0.0, 1.0)) -> str:
    """The MJCF `xyaxes` attribute of a camera at `position` looking at `target`."""
    R = look_at(position, target, up) @ _MUJOCO_TO_OPENCV  # columns: MuJoCo camera x, y, z
    return " ".join(f"{v:.6f}" for v in (*R[:, 0], *R[:, 1]))


def intrinsics(fovy_deg: float, height: int, width: int) -> np.ndarray:
    f = 0.5 * height / math.tan(math.radians(fovy_deg) / 2)
    return np.array([[f, 0.0, (width - 1) / 2], [0.0, f, (height - 1) / 2], [0.0, 0.0, 1.0]])


def cam2world(data: mujoco.MjData, cam_id: int) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = data.cam_xmat[cam_id].reshape(3, 3) @ _MUJOCO_TO_OPENCV
    T[:3, 3] = data.cam_xpos[cam_id]
    return T


def camera_info(model: mujoco.MjModel, data: mujoco.MjData, name: str, size: tuple[int, int]) -> CameraInfo:
    cam = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, name)
    if cam < 0:
        names = [model.camera(i).name for i in range(model.ncam)]
        raise PixioError(f"unknown camera {name!r}: choose from {', '.join(names)}")
    h, w = check_image_size(size, name)
    return CameraInfo(name, h, w, intrinsics(model.cam_fovy[cam], h, w), cam2world(data, cam))


def set_camera_pose(model: mujoco.MjModel, cam_id: int, cam2world_cv: np.ndarray) -> None:
    """Place a camera fixed to the world body at an OpenCV camera-to-world pose."""
    if model.cam_bodyid[cam_id] != 0:
        raise PixioError(f"camera {cam_id} is attached to a moving body: only world cameras can be placed")
    quat = np.empty(4)
    mujoco.mju_mat2Quat(quat, (np.asarray(cam2world_cv)[:3, :3] @ _MUJOCO_TO_OPENCV).reshape(-1))
    model.cam_pos[cam_id] = cam2world_cv[:3, 3]
    model.cam_quat[cam_id] = quat


def backproject(depth: np.ndarray, K: np.ndarray, cam2world_cv: np.ndarray | None = None) -> np.ndarray:
    """Depth (H, W) metric z -> points (H, W, 3) in the world (or camera) frame; invalid stay NaN."""
    h, w = depth.shape
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    z = np.where(depth > 0, depth, np.nan).astype(np.float64)
    x = (u - K[0, 2]) / K[0, 0] * z
    y = (v - K[1, 2]) / K[1, 1] * z
    points = np.stack([x, y, z], axis=-1)
    if cam2world_cv is not None:
        points = points @ cam2world_cv[:3, :3].T + cam2world_cv[:3, 3]
    return points


def project(points: np.ndarray, K: np.ndarray, cam2world_cv: np.ndarray) -> np.ndarray:
    """World points (..., 3) -> pixel coordinates (..., 2) and camera-frame z (..., 1) as (..., 3)."""
    R, t = cam2world_cv[:3, :3], cam2world_cv[:3, 3]
    cam = (np.asarray(points) - t) @ R
    uv = cam[..., :2] / cam[..., 2:3] * np.diag(K)[:2] + K[:2, 2]
    return np.concatenate([uv, cam[..., 2:3]], axis=-1)


def hemisphere_poses(
    n: int,
    center,
    rng: np.random.Generator,
    radius: tuple[float, float] = (0.7, 1.1),
    elevation_deg: tuple[float, float] = (20.0, 70.0),
    azimuth_span: float = 360.0,
    target_jitter: float = 0.05,
) -> list[np.ndarray]:
    """`n` OpenCV camera-to-world poses on a hemisphere around `center`, looking near it.

    Azimuths are spread evenly (with small jitter) over an arc of `azimuth_span` degrees that
    starts at a random azimuth: 360 surrounds the scene, a narrower arc gives views that overlap
    (what two-view pose estimation needs, and what a camera moved around a robot sees).
    """
    center = np.asarray(center, dtype=np.float64)
    start = rng.uniform(0, 360)
    span = float(azimuth_span)
    poses = []
    for i in range(n):
        az = math.radians((start + span * i / n + rng.uniform(-0.3, 0.3) * span / n) % 360)
        el = math.radians(rng.uniform(*elevation_deg))
        r = rng.uniform(*radius)
        eye = center + r * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        target = center + rng.uniform(-target_jitter, target_jitter, 3)
        T = np.eye(4)
        T[:3, :3] = look_at(eye, target)
        T[:3, 3] = eye
        poses.append(T)
    return poses


def parse_cameras(cameras, image_size, available: list[str]) -> dict[str, tuple[int, int]]:
    """User camera choice -> {name: (height, width)}.

    `cameras`: a name, a list of names, or {name: size}; `image_size`: int or (height, width),
    the size of every camera not given one.
    """
    if isinstance(cameras, str):
        cameras = [cameras]
    if isinstance(cameras, dict):
        items = [(name, size if size is not None else image_size) for name, size in cameras.items()]
    else:
        items = [(name, image_size) for name in cameras]
    if not items:
        raise PixioError("cameras is empty: name at least one camera, e.g. cameras=[front]")
    out = {}
    for name, size in items:
        if name not in available:
            raise PixioError(f"unknown camera {name!r}: choose from {', '.join(available)}")
        out[name] = check_image_size(size, name)
    if len(out) != len(items):
        raise PixioError("cameras lists the same camera twice")
    return out


def check_image_size(size, name: str) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        try:
            h, w = (int(s) for s in size)
        except (TypeError, ValueError):
            raise PixioError(f"image size {size!r} of camera {name!r}: give an int or (height, width)") from None
    if not (MIN_SIZE <= h <= MAX_SIZE and MIN_SIZE <= w <= MAX_SIZE):
        raise PixioError(f"image size {h}x{w} of camera {name!r} is out of range: use {MIN_SIZE} to {MAX_SIZE} pixels")
    return h, w


class CameraRig:
    """Renders named cameras of one model: RGB, and optionally depth and body segmentation."""

    def __init__(
        self,
        model: mujoco.MjModel,
        cameras: dict[str, tuple[int, int]],
        depth: bool = False,
        segmentation: bool = False,
        shadows: bool = False,
        antialias: bool = False,
    ):
        self.model = model
        self.sizes = dict(cameras)
        self.depth, self.segmentation = depth, segmentation
        self.ids = {name: mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, name) for name in cameras}
        # Each renderer's framebuffer is sized (and multisampled) from the model when it is made:
        # exactly the largest image here, since clearing a larger one costs CPU time with the
        # software rasteriser, and no multisampling unless asked (it doubles the render time).
        model.vis.global_.offheight = max(h for h, _ in cameras.values())
        model.vis.global_.offwidth = max(w for _, w in cameras.values())
        model.vis.quality.offsamples = 4 if antialias else 0
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}
        for size in sorted(set(cameras.values())):
            r = mujoco.Renderer(model, *size)
            r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = shadows
            r.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
            self._renderers[size] = r
        if not _OPEN_RIGS:
            atexit.unregister(_close_open_rigs)
            atexit.register(_close_open_rigs)
        _OPEN_RIGS.add(self)

    def render(self, data: mujoco.MjData) -> dict[str, dict[str, np.ndarray]]:
        """{"rgb": {camera: (H, W, 3) uint8}, "depth": {camera: (H, W) float32}, "segmentation": {...}}."""
        out: dict[str, dict[str, np.ndarray]] = {"rgb": {}}
        if self.depth:
            out["depth"] = {}
        if self.segmentation:
            out["segmentation"] = {}
        for name, size in self.sizes.items():
            r = self._renderers[size]
            r.update_scene(data, self.ids[name])
            out["rgb"][name] = r.render()
            if self.depth:
                r.enable_depth_rendering()
                d = r.render()
                r.disable_depth_rendering()
                # Pixels that hit nothing read as the far plane: mark them invalid.
                far = self.model.vis.map.zfar * self.model.stat.extent
                d[d >= far * 0.999] = 0.0
                out["depth"][name] = d
            if self.segmentation:
                r.enable_segmentation_rendering()
                seg = r.render()
                r.disable_segmentation_rendering()
                geom = np.where(seg[..., 1] == mujoco.mjtObj.mjOBJ_GEOM, seg[..., 0], -1)
                out["segmentation"][name] = np.where(geom >= 0, self.model.geom_bodyid[geom], -1).astype(np.int32)
        return out

    def observe(self, data: mujoco.MjData) -> dict:
        """Observation entries in LeRobot's gym layout: `pixels` (and `depth`, `segmentation`)
        hold an image, or a dict camera -> image when there are several cameras."""
        images = self.render(data)
        obs = {}
        for key, out in (("rgb", "pixels"), ("depth", "depth"), ("segmentation", "segmentation")):
            if key in images:
                obs[out] = images[key] if len(self.sizes) > 1 else next(iter(images[key].values()))
        return obs

    def observation_spaces(self) -> dict:
        """The gymnasium spaces of `observe`'s entries."""
        from gymnasium import spaces

        def per_camera(make):
            boxes = {name: make(h, w) for name, (h, w) in self.sizes.items()}
            return spaces.Dict(boxes) if len(boxes) > 1 else next(iter(boxes.values()))

        out = {"pixels": per_camera(lambda h, w: spaces.Box(0, 255, (h, w, 3), np.uint8))}
        if self.depth:
            far = float(self.model.vis.map.zfar * self.model.stat.extent)
            out["depth"] = per_camera(lambda h, w: spaces.Box(0.0, far, (h, w), np.float32))
        if self.segmentation:
            nbody = self.model.nbody
            out["segmentation"] = per_camera(lambda h, w: spaces.Box(-1, nbody - 1, (h, w), np.int32))
        return out

    def info(self, data: mujoco.MjData, name: str) -> CameraInfo:
        return camera_info(self.model, data, name, self.sizes[name])

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()
