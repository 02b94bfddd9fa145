"""Multi-view RGB-D scenes for training and evaluation: `envs` captures and external folders.

A scene folder (external data) holds:

    my_scene/
      rgb/*.png|jpg|...   required: the views, in file-name order
      depth/<stem>.npy    float32 (H, W) metric z in the camera frame (metres), one per image
        or <stem>.png     16-bit PNG depth in units of `depth_scale` metres (default 0.001: mm)
      cameras.npz         K (V, 3, 3) or (3, 3) for all views, in pixels of the image;
                          cam2world (V, 4, 4), OpenCV camera-to-world
      scene.json          optional: {"metric": false} when depths and poses share an unknown
                          scale (no scale loss then), {"depth_scale": 0.001} for PNG depth

`depth/` and `cameras.npz` are needed for training and evaluation, not for `pixio-robot recon`;
monocular depth (`train-depth`, `eval-depth`) needs `depth/` only. Captures written by
`pixio-robot capture` (format `pixio_robot.envs.capture/1`) have exactly this layout and are
read through `envs.capture`. A dataset root is a capture folder, a folder of scene folders, one
scene folder, or (depth only) a NYUv2-style list file: `*.txt` with one `rgb depth` pair of
paths per line, relative to the list's folder, depth a 16-bit PNG in millimetres (the layout
of the official Pixio NYUv2 splits; 480x640 frames get NYUv2's Eigen crop as there).

Handling of imperfect input: every view is resized to the model resolution (images bicubic,
depth nearest, intrinsics adjusted exactly, also when aspect ratios differ); depth that is 0,
negative, NaN or infinite counts as "no measurement"; camera poses that are not rigid
transforms, and two cameras at the same position (no baseline: translation directions and
pose AUC are undefined), are refused with an error naming the scene and view.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pixio_robot.errors import PixioError
from pixio_robot.images import IMAGE_SUFFIXES, read_image

MIN_BASELINE = 1e-4  # metres (or scene units) between two camera centres
MIN_SIDE = 16  # pixels: one patch; a smaller image holds no token's worth of content
MAX_STRETCH = 2.0  # an image whose aspect ratio differs more than this from the model's is refused
# NYUv2 frames (480x640) have an invalid border (registration); the official reader (after
# ZoeDepth) keeps rows 45:471 and columns 41:601, the Eigen crop.
NYU_SHAPE, EIGEN_CROP = (480, 640), (slice(45, 471), slice(41, 601))


@dataclass
class SceneData:
    """One scene at the model resolution. depth is z in metres, 0 where unknown."""

    name: str
    path: Path
    images: np.ndarray  # (V, H, W, 3) uint8
    depth: np.ndarray | None  # (V, H, W) float32
    K: np.ndarray | None  # (V, 3, 3) float64
    cam2world: np.ndarray | None  # (V, 4, 4) float64
    metric: bool = True
    stamp: str = ""  # changes when the image files change (token cache key)

    @property
    def num_views(self) -> int:
        return len(self.images)


def size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = (int(s) for s in size)
    return h, w


def find_scenes(root: str | os.PathLike) -> list[Path]:
    """Scene folders under a dataset root (capture folder, folder of scenes, or one scene)."""
    root = Path(root)
    if not root.is_dir():
        raise PixioError(f"{root}: no such folder: give a capture folder or a folder of scene folders")
    if (root / "capture.json").is_file():
        from envs.capture import scene_folders

        folders = scene_folders(root)
    elif (root / "rgb").is_dir():
        folders = [root]
    else:
        folders = sorted(p for p in root.iterdir() if (p / "rgb").is_dir() or (p / "scene.json").is_file())
    if not folders:
        raise PixioError(
            f"{root}: no scenes found: a scene folder holds rgb/ (and depth/, cameras.npz for training); "
            "see the README's reconstruction section"
        )
    return folders


def load_scenes(
    roots: str | os.PathLike | Sequence[str | os.PathLike],
    size: int | Sequence[int],
    geometry: bool = True,
    min_views: int = 1,
    limit: int | None = None,
    progress: bool = False,
    cameras: bool = True,
) -> list[SceneData]:
    """Every scene under `roots`, resized to `size`. `geometry` requires depth and, with
    `cameras`, intrinsics and poses; NYUv2-style list files are read only without `cameras`."""
    from functools import partial

    from tqdm import tqdm

    roots = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
    if not roots:
        raise PixioError("no data given: data=[DIR,...] (capture folders or folders of scene folders)")
    readers = []
    for root in map(Path, roots):
        if root.suffix == ".txt" and root.is_file():
            if not geometry or cameras:
                raise PixioError(
                    f"{root}: a NYUv2-style list has depth but no cameras: it serves train-depth and eval-depth; "
                    "give scene folders (rgb/, depth/, cameras.npz) here"
                )
            readers += [partial(_read_list_group, root, name, pairs, size) for name, pairs in _list_groups(root)]
        else:
            readers += [partial(read_scene, f, size, geometry, cameras) for f in find_scenes(root)]
    bar = dict(desc="scenes", unit="scene", disable=not progress)
    scenes = [read() for read in tqdm(readers[:limit], **bar)]
    for s in scenes:
        if s.num_views < min_views:
            raise PixioError(
                f"{s.path}: {s.num_views} view(s), but at least {min_views} are needed here "
                f"(training samples sets of 2 or more views): remove the scene or add views"
            )
    return scenes


def read_scene(
    folder: str | os.PathLike, size: int | Sequence[int], geometry: bool = True, cameras: bool = True
) -> SceneData:
    folder = Path(folder)
    meta = _scene_json(folder)
    if meta.get("format", "").startswith("pixio_robot.envs.capture/"):
        images, depth, K, cam2world, files = _read_capture(folder)
    else:
        images, depth, K, cam2world, files = _read_external(folder, meta, geometry, cameras)
    metric = bool(meta.get("metric", True))
    if geometry and cameras:
        _check_cameras(folder, images, K, cam2world)
    if geometry:
        _check_depth(folder, depth)
    h, w = size_pair(size)
    out_images, out_depth, out_K = [], [], []
    for i, im in enumerate(images):
        k = None if K is None else K[i]
        check_image_sides(f"{folder}: view {i}", im.shape, (h, w))
        if depth is not None and depth[i].shape != im.shape[:2]:
            raise PixioError(
                f"{folder}: depth of view {i} is {depth[i].shape[0]}x{depth[i].shape[1]} but its image is "
                f"{im.shape[0]}x{im.shape[1]}: depth must have its image's size"
            )
        im, d, k = resize_view(im, None if depth is None else depth[i], k, (h, w))
        out_images.append(im)
        out_depth.append(d)
        out_K.append(k)
    stamp = hashlib.sha1(
        json.dumps([[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]).encode()
    ).hexdigest()
    return SceneData(
        name=folder.name,
        path=folder,
        images=np.stack(out_images),
        depth=None if depth is None else np.stack(out_depth).astype(np.float32),
        K=None if K is None else np.stack(out_K),
        cam2world=cam2world,
        metric=metric,
        stamp=stamp,
    )


def check_image_sides(name: str, shape: tuple[int, ...], size: tuple[int, int]) -> None:
    """Refuse an image the model cannot use: a side under one patch, or an aspect ratio that
    resizing to `size` would stretch more than MAX_STRETCH times."""
    h, w = shape[:2]
    if min(h, w) < MIN_SIDE:
        raise PixioError(f"{name} is {h}x{w} pixels: each side needs at least {MIN_SIDE} (a patch): use larger images")
    stretch = (w / h) / (size[1] / size[0])
    if not 1 / MAX_STRETCH <= stretch <= MAX_STRETCH:
        raise PixioError(
            f"{name} is {h}x{w} pixels but the model sees {size[0]}x{size[1]}: resizing would stretch it "
            f"{max(stretch, 1 / stretch):.1f}x; crop it to about the model's aspect ratio first"
        )


def resize_view(image, depth, K, size: tuple[int, int]):
    """Resize an image (bicubic), its depth (nearest; invalid -> 0) and its intrinsics to (H, W).

    With pixel centres at integers, u' = (u + 0.5) * W'/W - 0.5, so fx scales by W'/W and
    cx' = (cx + 0.5) * W'/W - 0.5 (and the same for y): exact for any pair of sizes."""
    h, w = size
    H, W = image.shape[:2]
    if depth is not None:
        depth = np.asarray(depth, np.float32)
        depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)
    if (h, w) == (H, W):
        return image, depth, None if K is None else np.asarray(K, np.float64)
    image = np.asarray(Image.fromarray(image).resize((w, h), Image.BICUBIC))
    if depth is not None:
        depth = np.asarray(Image.fromarray(depth, mode="F").resize((w, h), Image.NEAREST), np.float32)
    if K is not None:
        sx, sy = w / W, h / H
        K = np.asarray(K, np.float64).copy()
        K[0, 0], K[0, 1], K[1, 1] = K[0, 0] * sx, K[0, 1] * sx, K[1, 1] * sy
        K[0, 2], K[1, 2] = (K[0, 2] + 0.5) * sx - 0.5, (K[1, 2] + 0.5) * sy - 0.5
    return image, depth, K


# ---- readers --------------------------------------------------------------------------------


def _scene_json(folder: Path) -> dict:
    path = folder / "scene.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PixioError(f"{path}: unreadable ({e}): fix or remove it") from None
    if not isinstance(meta, dict):
        raise PixioError(f"{path}: expected a JSON object")
    return meta


def _read_capture(folder: Path):
    from envs.capture import load_scene

    scene = load_scene(folder)
    views = scene.views
    files = [folder / v["rgb"] for v in scene.meta["views"]]
    return (
        [v.rgb for v in views],
        [v.depth for v in views],
        np.stack([v.K for v in views]),
        np.stack([v.cam2world for v in views]),
        files,
    )


def _read_external(folder: Path, meta: dict, geometry: bool, cameras: bool = True):
    rgb_dir = folder / "rgb"
    files = sorted(p for p in rgb_dir.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if rgb_dir.is_dir() else []
    if not files:
        raise PixioError(f"{folder}: no images in rgb/ ({'/'.join(IMAGE_SUFFIXES)}): a scene folder needs rgb/")
    images = [read_image(f) for f in files]
    if not geometry:
        return images, None, None, None, files
    depth_dir = folder / "depth"
    if not depth_dir.is_dir():
        raise PixioError(
            f"{folder}: no depth/ folder: training and evaluation need metric depth per view "
            "(depth/<image stem>.npy float32 metres, or 16-bit .png)"
        )
    scale = float(meta.get("depth_scale", 0.001))
    depth = []
    for f in files:
        npy, png = depth_dir / f"{f.stem}.npy", depth_dir / f"{f.stem}.png"
        if npy.is_file():
            try:
                d = np.load(npy, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise PixioError(f"{npy}: unreadable depth ({e})") from None
        elif png.is_file():
            with Image.open(png) as im:
                d = np.asarray(im).astype(np.float32) * scale
        else:
            raise PixioError(f"{folder}: no depth for {f.name}: expected depth/{f.stem}.npy or depth/{f.stem}.png")
        if d.ndim != 2:
            raise PixioError(f"{folder}: depth for {f.name} has shape {d.shape}: expected (H, W)")
        depth.append(d.astype(np.float32))
    if not cameras:
        return images, depth, None, None, files
    cams = folder / "cameras.npz"
    if not cams.is_file():
        raise PixioError(
            f"{folder}: no cameras.npz: training and evaluation need intrinsics K (V,3,3) and "
            "camera-to-world poses cam2world (V,4,4)"
        )
    try:
        with np.load(cams, allow_pickle=False) as z:
            if "K" not in z or "cam2world" not in z:
                raise PixioError(f"{cams}: needs arrays K and cam2world, found {sorted(z.keys())}")
            K, cam2world = np.asarray(z["K"], np.float64), np.asarray(z["cam2world"], np.float64)
    except (OSError, ValueError) as e:
        raise PixioError(f"{cams}: unreadable ({e})") from None
    if K.shape == (3, 3):
        K = np.repeat(K[None], len(files), axis=0)
    return images, depth, K, cam2world, files


def _check_cameras(folder: Path, images, K, cam2world) -> None:
    v = len(images)
    if K.shape != (v, 3, 3):
        raise PixioError(f"{folder}: K has shape {K.shape}, expected ({v}, 3, 3) or (3, 3) for {v} images")
    if cam2world.shape != (v, 4, 4):
        raise PixioError(f"{folder}: cam2world has shape {cam2world.shape}, expected ({v}, 4, 4) for {v} images")
    for i in range(v):
        k, T = K[i], cam2world[i]
        if not np.isfinite(k).all() or k[0, 0] <= 0 or k[1, 1] <= 0 or not np.allclose(k[2], [0, 0, 1]):
            raise PixioError(
                f"{folder}: intrinsics of view {i} are not a pinhole K (positive focal lengths, last row 0 0 1)"
            )
        R = T[:3, :3]
        if (
            not np.isfinite(T).all()
            or not np.allclose(R.T @ R, np.eye(3), atol=1e-3)
            or np.linalg.det(R) < 0
            or not np.allclose(T[3], [0, 0, 0, 1])
        ):
            raise PixioError(
                f"{folder}: cam2world of view {i} is not a rigid camera-to-world transform (rotation with "
                "det +1, last row 0 0 0 1, finite): check the pose convention"
            )
    centres = cam2world[:, :3, 3]
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    np.fill_diagonal(gaps, np.inf)
    if v > 1 and gaps.min() < MIN_BASELINE:
        i, j = np.unravel_index(np.argmin(gaps), gaps.shape)
        raise PixioError(
            f"{folder}: views {i} and {j} have the same camera position (degenerate: no baseline, so "
            "translation directions are undefined): drop one of them"
        )


def _check_depth(folder: Path, depth) -> None:
    if not any(np.any(np.isfinite(d) & (d > 0)) for d in depth):
        raise PixioError(f"{folder}: no valid depth in any view (all 0, negative, NaN or inf)")


# ---- NYUv2-style lists (monocular depth) -----------------------------------------------------


def _list_groups(path: Path) -> list[tuple[str, list[tuple[Path, Path]]]]:
    """The (rgb, depth) pairs of a list file, grouped by the rgb's folder (a NYUv2 scene) in
    order of first appearance: each group is one cached scene."""
    groups: dict[str, list[tuple[Path, Path]]] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 2:
            raise PixioError(f"{path}:{n}: expected `rgb_path depth_path`, got {line.strip()!r}")
        rgb, depth = (path.parent / p for p in parts[:2])
        for f in (rgb, depth):
            if not f.is_file():
                raise PixioError(
                    f"{path}:{n}: {f} not found: paths are relative to the list's folder "
                    "(put the list in the dataset root)"
                )
        groups.setdefault(str(Path(parts[0]).parent), []).append((rgb, depth))
    if not groups:
        raise PixioError(f"{path}: no `rgb_path depth_path` lines")
    return list(groups.items())


def _read_list_group(path: Path, name: str, pairs: list[tuple[Path, Path]], size) -> SceneData:
    h, w = size_pair(size)
    images, depths = [], []
    for rgb, depth_file in pairs:
        image = read_image(rgb)
        try:
            with Image.open(depth_file) as im:
                depth = np.asarray(im).astype(np.float32) * 0.001  # 16-bit millimetres
        except OSError as e:
            raise PixioError(f"{depth_file}: unreadable depth ({e})") from None
        if depth.shape != image.shape[:2]:
            raise PixioError(
                f"{depth_file}: depth is {'x'.join(map(str, depth.shape))} but its image {rgb.name} is "
                f"{image.shape[0]}x{image.shape[1]}: depth must be a single-channel image of the image's size"
            )
        if image.shape[:2] == NYU_SHAPE:
            image, depth = image[EIGEN_CROP], depth[EIGEN_CROP]
        check_image_sides(str(rgb), image.shape, (h, w))
        image, depth, _ = resize_view(np.ascontiguousarray(image), depth, None, (h, w))
        images.append(image)
        depths.append(depth)
    folder = path.parent / name
    _check_depth(folder, depths)
    files = [f for pair in pairs for f in pair]
    stamp = hashlib.sha1(json.dumps([[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]).encode())
    return SceneData(name, folder, np.stack(images), np.stack(depths), None, None, stamp=stamp.hexdigest())
