"""Reconstruction of a set of images: metric points, cameras, a `.ply` and a Rerun recording.

    rec = Reconstructor.from_checkpoint("runs/recon/model.safetensors")
    result = rec(["a.png", "b.png", "c.png"])          # or uint8 (H, W, 3) arrays
    result.save_ply("scene.ply", voxel=0.005)           # confidence-filtered coloured cloud
    result.save_rrd("scene.rrd")                        # cameras, images, depth, cloud

Points and cameras are in view 0's camera frame (OpenCV axes), in metres (the head's metric
scale applied). Every view is resized to the head's training resolution; known intrinsics (in
pixels of the given images) are resized with them and replace the predicted rays; they also
enter the head's tokens, except for views of the camera it assumes (`recon.assumed_fovy`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pixio_robot.atomic import atomic_path
from pixio_robot.bundled import resolve_weights
from pixio_robot.deps import open3d
from pixio_robot.devices import pick_device, torch_threads
from pixio_robot.errors import PixioError
from pixio_robot.images import list_images, read_image

from .backbone import resolve_encoder
from .commands import ReconCommandConfig
from .data import check_image_sides, resize_view, size_pair
from .geometry import intrinsics_from_rays, mirror_intrinsics
from .modeling_recon import ReconModel, ReconOutput
from .tokens import TokenCache


@dataclass
class Reconstruction:
    """One reconstructed set of V views of H x W pixels, metric, in view 0's camera frame."""

    images: np.ndarray  # (V, H, W, 3) uint8, as the head saw them
    points: np.ndarray  # (V, H, W, 3) float32, metres
    conf: np.ndarray  # (V, H, W) >= 1
    mask: np.ndarray  # (V, H, W) bool: predicted to hit a surface
    depth: np.ndarray  # (V, H, W) z in each camera frame, metres
    cam2world: np.ndarray  # (V, 4, 4) camera-to-world, metres
    K: np.ndarray  # (V, 3, 3): given, or fitted to the predicted rays
    scale: float  # the metric scale m

    @classmethod
    def from_output(cls, images: np.ndarray, out: ReconOutput, K: torch.Tensor | None = None) -> Reconstruction:
        """From the first set of a model output."""
        first = {k: getattr(out, k)[:1] for k in out.__dataclass_fields__}
        out = ReconOutput(**first)
        K = intrinsics_from_rays(out.rays[0].double()) if K is None else K
        return cls(
            images=np.asarray(images),
            points=out.points(metric=True)[0].float().cpu().numpy(),
            conf=out.conf[0].float().cpu().numpy(),
            mask=(out.mask_logits[0] > 0).cpu().numpy(),
            depth=out.depth_z(metric=True)[0].float().cpu().numpy(),
            cam2world=out.cam2world(metric=True)[0].double().cpu().numpy(),
            K=torch.as_tensor(K).double().cpu().numpy(),
            scale=float(out.scale[0]),
        )

    def cloud(self, conf_percentile: float = 10.0, voxel: float = 0.0, outliers: bool = False):
        """(points (N, 3) float64, colours (N, 3) uint8) of the surface pixels, without the
        `conf_percentile` % least confident of them; then optional voxel downsampling (colours
        averaged) and statistical outlier removal (20 neighbours, 2 standard deviations)."""
        if not 0 <= conf_percentile < 100:
            raise PixioError(f"conf_percentile={conf_percentile}: give a percentage in [0, 100)")
        keep = self.mask & np.isfinite(self.points).all(-1)
        if keep.any() and conf_percentile > 0:
            keep &= self.conf >= np.percentile(self.conf[keep], conf_percentile)
        points, colors = self.points[keep].astype(np.float64), self.images[keep]
        if voxel > 0 or outliers:
            cloud = _o3d_cloud(points, colors)
            if voxel > 0:
                cloud = cloud.voxel_down_sample(voxel)
            if outliers and len(cloud.points) > 20:
                cloud, _ = cloud.remove_statistical_outlier(nb_neighbors=20, std_ratio=2.0)
            points = np.asarray(cloud.points)
            colors = np.round(np.asarray(cloud.colors) * 255).astype(np.uint8)
        return points, colors

    def save_ply(self, path: str | os.PathLike, **cloud_options) -> int:
        """Write the coloured cloud through open3d (binary .ply, atomically); returns the count."""
        o3d = open3d()

        path = Path(path)
        if path.suffix.lower() != ".ply":
            raise PixioError(f"{path}: the point cloud is written as .ply: name it *.ply")
        points, colors = self.cloud(**cloud_options)
        with atomic_path(path) as tmp:
            # open3d picks the writer from the file name's extension, whatever `format` says.
            named = tmp.with_name(tmp.name + ".ply")
            try:
                if not o3d.io.write_point_cloud(str(named), _o3d_cloud(points, colors)):
                    raise PixioError(f"{path}: open3d could not write the point cloud")
                os.replace(named, tmp)
            finally:
                named.unlink(missing_ok=True)
        return len(points)

    def save_rrd(self, path: str | os.PathLike, **cloud_options) -> Path:
        """A Rerun recording: per view its pose, pinhole frustum, image and predicted depth
        (`world/cameras/view_NNN`, `.../image`, `.../depth`), and the fused cloud (`world/points`)."""
        import rerun as rr

        from pixio_robot.viz import rerun_recording

        points, colors = self.cloud(**cloud_options)
        with rerun_recording(path, application_id="pixio_robot_recon") as rec:
            rec.log("world", rr.ViewCoordinates.RDF, static=True)  # view 0's camera frame
            h, w = self.images.shape[1:3]
            for i in range(len(self.images)):
                T, entity = self.cam2world[i], f"world/cameras/view_{i:03d}"
                rec.log(entity, rr.Transform3D(translation=T[:3, 3], mat3x3=T[:3, :3]), static=True)
                rec.log(
                    entity,
                    rr.Pinhole(image_from_camera=self.K[i], resolution=[w, h], camera_xyz=rr.ViewCoordinates.RDF),
                    static=True,
                )
                rec.log(f"{entity}/image", rr.Image(self.images[i]), static=True)
                depth = np.where(self.mask[i], self.depth[i], 0.0).astype(np.float32)
                rec.log(f"{entity}/depth", rr.DepthImage(depth, meter=1.0), static=True)
            rec.log("world/points", rr.Points3D(points.astype(np.float32), colors=colors), static=True)
            rec.log("scale", rr.TextDocument(f"metric scale m = {self.scale:.4f}"), static=True)
        return Path(path)


def _o3d_cloud(points: np.ndarray, colors: np.ndarray):
    o3d = open3d()

    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(points, np.float64).reshape(-1, 3)))
    cloud.colors = o3d.utility.Vector3dVector(np.asarray(colors, np.float64).reshape(-1, 3) / 255.0)
    return cloud


class Reconstructor:
    """A trained head with its frozen encoder: images in, `Reconstruction` out."""

    def __init__(
        self,
        model: ReconModel,
        cache: TokenCache,
        image_size: tuple[int, int],
        device: torch.device | str = "cpu",
        flip: bool = False,
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.cache = cache
        self.image_size = size_pair(image_size)
        self.flip = flip  # test-time flip: also read the images flipped left-right, average

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike,
        encoder: str | None = None,
        device: str = "auto",
        cache_dir: str | os.PathLike | None = None,
        flip: bool = False,
    ) -> Reconstructor:
        """The head in `checkpoint` (a run's model.safetensors) on the encoder it records (or
        `encoder`); `cache_dir` caches the tokens of scenes (evaluation), none for plain images;
        `flip`: test-time flip (twice the work). A `Reconstructor` given as `checkpoint` is
        returned as it is."""
        if isinstance(checkpoint, Reconstructor):
            return checkpoint
        checkpoint = resolve_weights(checkpoint)  # e.g. recon_sim_vitn16, SHA-256 checked
        model, meta = ReconModel.load(checkpoint)
        if "encoder" not in meta:
            raise PixioError(f"{checkpoint}: no encoder recorded: was it written by train-recon?")
        enc, sha = resolve_encoder(meta["encoder"], checkpoint, encoder)
        if enc.embed_dim != model.encoder_dim:
            raise PixioError(f"encoder width {enc.embed_dim} does not fit the head (trained on {model.encoder_dim})")
        size = size_pair(meta.get("image_size", 128))
        dev = pick_device(device)
        return cls(model, TokenCache(enc, sha, size, cache_dir, device=dev), size, dev, flip)

    @torch.no_grad()
    def predict(
        self, tokens: torch.Tensor, K: torch.Tensor | None = None, mirrored: torch.Tensor | None = None
    ) -> ReconOutput:
        """Head output for tokens (V, h, w, D) or (B, V, h, w, D); K (V|B,V, 3, 3) optional.

        `mirrored`: the tokens of the same images flipped left-right. The head's prediction for
        them, mirrored back (`ReconOutput.mirrored`), is averaged with the plain one: the two
        are about equally good and their errors partly independent (README, test-time flip)."""
        if tokens.ndim == 4:
            tokens, K = tokens[None], None if K is None else torch.as_tensor(K)[None]
            mirrored = None if mirrored is None else mirrored[None]
        K = None if K is None else torch.as_tensor(K).to(self.device)
        tell = None
        if K is not None and self.model.config.assumed_fovy is not None:
            # The camera the head assumes was learnt untold half the time and is the only one its
            # untold path serves, so it does better there than the told path that serves every
            # camera (README, the assumed camera): its views keep only their given rays.
            tell = ~self.model.assumed_camera(K, tokens.shape[-3] * self.model.patch_size)
        out = self.model(tokens.to(self.device), K, tell=tell)
        if mirrored is None:
            return out
        K_flip = None if K is None else mirror_intrinsics(K, tokens.shape[-2] * self.model.patch_size)
        return ReconOutput.average([out, self.model(mirrored.to(self.device), K_flip, tell=tell).mirrored()])

    def prepare(
        self, images: Sequence[np.ndarray | str | os.PathLike], intrinsics: np.ndarray | None = None
    ) -> tuple[np.ndarray, torch.Tensor | None]:
        """Read and resize views to the head's resolution (warning when aspect ratios change)."""
        if len(images) == 0:
            raise PixioError("no images given: reconstruction needs at least one view")
        if len(images) == 1:
            print(
                "warning: one view given to a multi-view head (trained on 2-4 views): depth and scale come from "
                "one image alone and are far less accurate; give 2 or more views of the scene",
                file=sys.stderr,
            )
        arrays = [read_image(im) if isinstance(im, (str, os.PathLike)) else np.asarray(im) for im in images]
        for i, a in enumerate(arrays):
            if a.ndim != 3 or a.shape[-1] != 3 or a.dtype != np.uint8:
                raise PixioError(f"images must be uint8 (H, W, 3) RGB, got {a.dtype} {a.shape}")
            name = str(images[i]) if isinstance(images[i], (str, os.PathLike)) else f"image {i}"
            check_image_sides(name, a.shape, self.image_size)
        K = None
        if intrinsics is not None:
            K = np.asarray(intrinsics, np.float64)
            K = np.repeat(K[None], len(arrays), 0) if K.shape == (3, 3) else K
            if K.shape != (len(arrays), 3, 3) or not np.isfinite(K).all() or (K[:, 0, 0] <= 0).any():
                raise PixioError(f"intrinsics of shape {K.shape} for {len(arrays)} images: give (3, 3) or (V, 3, 3)")
        h, w = self.image_size
        aspects = {round(a.shape[1] / a.shape[0], 2) for a in arrays}
        if any(abs(r - w / h) > 0.05 * w / h for r in aspects):
            print(
                f"warning: views resized to {h}x{w} from aspect ratios {sorted(aspects)}: stretched images "
                "reconstruct worse (crop them to the head's aspect ratio first)",
                file=sys.stderr,
            )
        out, out_K = [], []
        for i, a in enumerate(arrays):
            im, _, k = resize_view(a, None, None if K is None else K[i], (h, w))
            out.append(im)
            out_K.append(k)
        return np.stack(out), None if K is None else torch.from_numpy(np.stack(out_K))

    def __call__(
        self, images: Sequence[np.ndarray | str | os.PathLike], intrinsics: np.ndarray | None = None
    ) -> Reconstruction:
        views, K = self.prepare(images, intrinsics)
        mirrored = self.cache.encode(views[:, :, ::-1].copy()) if self.flip else None
        out = self.predict(self.cache.encode(views), K, mirrored)
        return Reconstruction.from_output(views, out, K)


def reconstruct(
    images: Sequence[np.ndarray | str | os.PathLike],
    checkpoint: str | os.PathLike,
    intrinsics: np.ndarray | None = None,
    encoder: str | None = None,
    device: str = "auto",
    flip: bool = False,
) -> Reconstruction:
    """One-call reconstruction of a set of images with a trained head (`flip`: test-time flip)."""
    return Reconstructor.from_checkpoint(checkpoint, encoder, device, flip=flip)(images, intrinsics)


def reconstruct_to_files(
    images: str | os.PathLike | Sequence[np.ndarray | str | os.PathLike],
    checkpoint: str | os.PathLike | Reconstructor,
    ply: str | os.PathLike,
    rrd: str | os.PathLike | None = None,
    *,
    views: int | None = None,
    intrinsics: np.ndarray | str | os.PathLike | None = None,
    conf_percentile: float = 10.0,
    voxel: float = 0.0,
    outliers: bool = True,
    encoder: str | None = None,
    device: str = "auto",
    threads: int | None = None,
    overwrite: bool = False,
    flip: bool = False,
) -> dict:
    """Reconstruct views and write the coloured cloud (`ply`) and, unless None, a recording (`rrd`).

    `images`: image files / uint8 (H, W, 3) arrays, or one folder (a scene folder of a capture or
    of the external format means its rgb/ views); `views` keeps the first N of them.
    `checkpoint`: a head's model.safetensors, or a loaded `Reconstructor` (reuse it across calls).
    `intrinsics`: known K ((3, 3), (V, 3, 3), a .npy, an .npz with K, or "scene": the K of the
    scene folder's cameras.npz), in pixels of the given images. `flip`: test-time flip (a
    given `Reconstructor` keeps its own setting). Nothing is written when an
    output exists and `overwrite` is False, or when anything fails (writes are atomic).
    Returns {"views", "points", "scale", "ply", "rrd", "seconds"}."""
    t0 = time.perf_counter()
    outputs = [Path(ply)] + ([Path(rrd)] if rrd else [])
    if Path(ply).suffix.lower() != ".ply":
        raise PixioError(f"out={ply}: the point cloud is written as .ply: name it *.ply")
    if rrd and Path(rrd).suffix != ".rrd":
        raise PixioError(f"rrd={rrd}: Rerun recordings are .rrd files")
    for p in outputs:
        if p.exists() and not overwrite:
            raise PixioError(f"{p} exists: pass overwrite=true to replace it, or choose another name")
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    if not images:
        raise PixioError("no images given: reconstruction needs at least one view")
    folder = _scene_folder(images)
    if all(isinstance(im, (str, os.PathLike)) for im in images):
        images = _image_paths([str(im) for im in images])
    if views is not None:
        if views < 1:
            raise PixioError(f"views={views}: give at least 1")
        images = list(images)[:views]
    K = _read_intrinsics(intrinsics, folder) if isinstance(intrinsics, (str, os.PathLike)) else intrinsics
    if K is not None and np.ndim(K) == 3 and len(K) > len(images):
        K = np.asarray(K)[: len(images)]  # the first `views` of a scene's cameras
    with torch_threads(threads):
        result = Reconstructor.from_checkpoint(checkpoint, encoder, device, flip=flip)(images, K)
    options = {"conf_percentile": conf_percentile, "voxel": voxel, "outliers": outliers}
    n = result.save_ply(ply, **options)
    if rrd:
        result.save_rrd(rrd, **options)
    return {
        "views": len(result.images),
        "points": n,
        "scale": result.scale,
        "ply": Path(ply),
        "rrd": Path(rrd) if rrd else None,
        "seconds": time.perf_counter() - t0,
    }


# ---- the command ----------------------------------------------------------------------------


def _scene_folder(sources: Sequence) -> Path | None:
    """The scene folder when `sources` is exactly one (it has rgb/), else None."""
    if len(sources) == 1 and isinstance(sources[0], (str, os.PathLike)) and (Path(sources[0]) / "rgb").is_dir():
        return Path(sources[0])
    return None


def _image_paths(sources: Sequence[str]) -> list[Path]:
    # A scene folder (capture or external format) means its rgb/ views, not its label images.
    expanded = [str(Path(s) / "rgb") if (Path(s) / "rgb").is_dir() else s for s in sources]
    return list_images(expanded)


def _read_intrinsics(path: str | os.PathLike, scene: Path | None = None) -> np.ndarray:
    if str(path) == "scene":
        if scene is None or not (scene / "cameras.npz").is_file():
            raise PixioError("intrinsics=scene needs one scene folder with a cameras.npz as the images")
        path = scene / "cameras.npz"
    p = Path(path)
    if not p.is_file():
        raise PixioError(f"intrinsics={path}: no such file")
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                if "K" not in z:
                    raise PixioError(f"{p}: no array K in it (arrays: {sorted(z.keys())})")
                return np.asarray(z["K"], np.float64)
        return np.asarray(np.load(p, allow_pickle=False), np.float64)
    except (OSError, ValueError) as e:
        raise PixioError(f"intrinsics={path}: unreadable ({e}): give a .npy (3,3)/(V,3,3) or an .npz with K") from e


def run_recon(cfg: ReconCommandConfig) -> int:
    if not cfg.images:
        raise PixioError("no images given: pixio-robot recon IMAGES... checkpoint=model.safetensors")
    summary = reconstruct_to_files(
        cfg.images,
        cfg.checkpoint,
        cfg.out,
        str(Path(cfg.out).with_suffix(".rrd")) if cfg.rrd == "auto" else cfg.rrd,
        views=cfg.views,
        intrinsics=cfg.intrinsics,
        conf_percentile=cfg.conf_percentile,
        voxel=cfg.voxel,
        outliers=cfg.outliers,
        encoder=cfg.encoder,
        device=cfg.device,
        threads=cfg.threads,
        overwrite=cfg.overwrite,
        flip=cfg.flip,
    )
    written = " and ".join(str(p) for p in (summary["ply"], summary["rrd"]) if p)
    print(
        f"{summary['views']} views -> {summary['points']} points (metric scale {summary['scale']:.3f}, "
        f"{summary['seconds']:.1f} s); wrote {written}"
    )
    return 0
