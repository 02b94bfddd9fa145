"""Multi-view RGB-D captures of random scenes, for training and testing reconstruction.

    pixio-robot capture env=stack scenes=100 views=8 image_size=256 out=captures/stack

On-disk format (`FORMAT`), one folder per scene:

    captures/stack/
      capture.json              format, environment (EnvSpec), options, scene folder names
      scene_000000/
        scene.json              seed, image size, depth and label conventions, per view the file
                                names with K (3x3, pixels) and cam2world (4x4), label names,
                                the task's object state
        cameras.npz             K (V, 3, 3) and cam2world (V, 4, 4), float64 (same as scene.json)
        rgb/000.png ...         uint8 RGB
        depth/000.npy ...       float32 (H, W): metric z in the camera frame, metres; 0 = no surface
        labels/000.png ...      uint16 (H, W): label of the surface seen, 0 = no surface; label
                                k >= 1 is MuJoCo body k - 1, named in scene.json "labels"

Cameras follow OpenCV (x right, y down, z forward); the world is z-up in metres with the origin
at the centre of the table top. A world point p seen at pixel (u, v) with depth z satisfies
z * [u, v, 1] = K @ R^T (p - t) for cam2world = [[R, t], [0, 1]], pixel centres at integers.
Views lie on a hemisphere around the workspace (random radius, elevation and azimuth, spread
evenly around, or over an `azimuth_span` arc from a random start), looking near its centre. A
scene folder appears complete or not at all.
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixio_robot.atomic import TMP_PREFIX, write_json
from pixio_robot.errors import PixioError

from .registry import METAWORLD_ID, EnvSpec

FORMAT = "pixio_robot.envs.capture/1"
CENTER = (-0.02, 0.0, 0.05)  # the workspace the views look at


@dataclass
class View:
    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 metres, 0 = none
    labels: np.ndarray  # (H, W) uint16, 0 = none, body id + 1
    K: np.ndarray  # (3, 3)
    cam2world: np.ndarray  # (4, 4)


@dataclass
class CapturedScene:
    path: Path
    meta: dict
    views: list[View]

    def points(self, view: int) -> np.ndarray:
        """World points (H, W, 3) of a view's depth (NaN where there is no surface)."""
        from .cameras import backproject

        v = self.views[view]
        return backproject(v.depth, v.K, v.cam2world)


def load_scene(path: str | os.PathLike) -> CapturedScene:
    from PIL import Image

    path = Path(path)
    try:
        meta = json.loads((path / "scene.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PixioError(f"{path}: not a captured scene ({e})") from None
    views = []
    for v in meta["views"]:
        views.append(
            View(
                rgb=np.asarray(Image.open(path / v["rgb"]).convert("RGB")),
                depth=np.load(path / v["depth"]),
                labels=np.asarray(Image.open(path / v["labels"])).astype(np.uint16),
                K=np.asarray(v["K"], np.float64),
                cam2world=np.asarray(v["cam2world"], np.float64),
            )
        )
    return CapturedScene(path, meta, views)


def scene_folders(root: str | os.PathLike) -> list[Path]:
    """The complete scene folders of a capture, in order."""
    root = Path(root)
    meta = _read_capture(root)
    return [root / name for name in meta["scenes"] if (root / name / "scene.json").is_file()]


def _read_capture(root: Path) -> dict:
    try:
        meta = json.loads((root / "capture.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise PixioError(f"{root}: not a capture folder (no readable capture.json)") from None
    if meta.get("format") != FORMAT:
        raise PixioError(f"{root}/capture.json: unknown format {meta.get('format')!r}")
    return meta


def check_options(spec: EnvSpec, views: int, radius, elevation, fovy: float, azimuth_span: float) -> None:
    """Refuses (one line) what no capture can be made with; before any folder is made."""
    if spec.id == METAWORLD_ID:
        raise PixioError("capture works on the own tasks (reach, push, pick_place, stack, drawer_open)")
    if not 1 <= views <= 256:
        raise PixioError(f"views={views}: use 1 to 256")
    if not (0 < radius[0] <= radius[1] and 0 <= elevation[0] <= elevation[1] <= 90 and 5 <= fovy <= 150):
        raise PixioError(f"radius={radius}, elevation={elevation}, fovy={fovy}: give increasing ranges (0-90 deg)")
    if not 0 < azimuth_span <= 360:
        raise PixioError(f"azimuth_span={azimuth_span:g}: give an arc of more than 0 and at most 360 degrees")


class SceneCapturer:
    """Renders scenes of one environment from `views` hemisphere cameras."""

    def __init__(
        self,
        spec: EnvSpec,
        views: int,
        image_size,
        radius,
        elevation,
        fovy: float,
        expert_steps: int,
        azimuth_span: float = 360.0,
    ):
        from .cameras import CameraRig, check_image_size

        check_options(spec, views, radius, elevation, fovy, azimuth_span)
        self.spec = spec.replace(cameras=None, extra_cameras=views)
        self.env = self.spec.make()
        self.base = self.env.unwrapped
        self.names = [f"view_{i:03d}" for i in range(views)]
        self.size = check_image_size(image_size, "view")
        for name in self.names:
            self.base.model.cam_fovy[self.base.model.camera(name).id] = fovy
        self.rig = CameraRig(self.base.model, {n: self.size for n in self.names}, depth=True, segmentation=True)
        self.radius, self.elevation, self.expert_steps = tuple(radius), tuple(elevation), int(expert_steps)
        self.azimuth_span = float(azimuth_span)
        from .experts import make_expert

        self.expert = make_expert(self.env)

    def capture(self, seed: int) -> tuple[dict, list[View]]:
        from .cameras import hemisphere_poses

        env, base = self.env, self.base
        obs, _ = env.reset(seed=seed)
        self.expert.reset(seed)
        rng = np.random.default_rng([seed, 11])
        for _ in range(int(rng.integers(0, self.expert_steps + 1))):
            obs, _, terminated, truncated, _ = env.step(self.expert(obs))
            if terminated or truncated:
                break
        poses = hemisphere_poses(len(self.names), CENTER, rng, self.radius, self.elevation, self.azimuth_span)
        for name, pose in zip(self.names, poses, strict=True):
            base.place_camera(name, pose)
        images = self.rig.render(base.data)
        views = []
        for name in self.names:
            info = self.rig.info(base.data, name)
            labels = (images["segmentation"][name] + 1).astype(np.uint16)
            views.append(View(images["rgb"][name], images["depth"][name], labels, info.K, info.cam2world))
        m = base.model
        meta = {
            "format": FORMAT,
            "seed": int(seed),
            "env": self.spec.to_dict(),
            "height": self.size[0],
            "width": self.size[1],
            "depth": {"unit": "m", "kind": "z in the camera frame", "invalid": 0},
            "camera_convention": "OpenCV: x right, y down, z forward; cam2world maps camera to world",
            "world": "z up, metres, origin at the centre of the table top",
            "labels": ["none", *(m.body(i).name or f"body_{i}" for i in range(m.nbody))],
            "object_state": {
                "names": list(base.object_state_names),
                "values": [float(v) for v in base.object_state()],
            },
            "expert_steps": base.steps,
        }
        return meta, views

    def close(self) -> None:
        self.rig.close()
        self.env.close()


def write_scene(folder: Path, meta: dict, views: list[View]) -> None:
    """Write a scene into a temporary sibling folder, then move it into place."""
    from PIL import Image

    tmp = folder.parent / f"{TMP_PREFIX}{folder.name}-{uuid.uuid4().hex[:8]}"
    for sub in ("rgb", "depth", "labels"):
        (tmp / sub).mkdir(parents=True)
    entries = []
    for i, v in enumerate(views):
        names = {"rgb": f"rgb/{i:03d}.png", "depth": f"depth/{i:03d}.npy", "labels": f"labels/{i:03d}.png"}
        Image.fromarray(v.rgb).save(tmp / names["rgb"])
        np.save(tmp / names["depth"], v.depth.astype(np.float32))
        buf = io.BytesIO()
        Image.fromarray(v.labels.astype(np.uint16)).save(buf, format="PNG")
        (tmp / names["labels"]).write_bytes(buf.getvalue())
        entries.append({**names, "K": v.K.tolist(), "cam2world": v.cam2world.tolist()})
    np.savez(tmp / "cameras.npz", K=np.stack([v.K for v in views]), cam2world=np.stack([v.cam2world for v in views]))
    write_json(tmp / "scene.json", {**meta, "views": entries})
    if folder.exists():
        shutil.rmtree(folder)  # an incomplete scene of an interrupted run (no scene.json)
    os.replace(tmp, folder)


# ---- the command --------------------------------------------------------------------------

_worker_capturer: SceneCapturer | None = None


def _init_worker(args) -> None:
    global _worker_capturer
    import envs  # noqa: F401  (MUJOCO_GL, registration)

    spec_dict, rest = args
    _worker_capturer = SceneCapturer(EnvSpec.from_dict(spec_dict), *rest)


def _capture_one(job) -> str:
    folder, seed = job
    meta, views = _worker_capturer.capture(seed)
    write_scene(Path(folder), meta, views)
    return folder


def capture(cfg) -> int:
    if cfg.scenes < 1:
        raise PixioError(f"scenes={cfg.scenes}: capture at least 1")
    spec = EnvSpec.parse(cfg.env, **{**cfg.env_options(), "cameras": None})
    root = Path(cfg.out)
    size = cfg.image_size if cfg.image_width is None else (cfg.image_size, cfg.image_width)
    rest = (cfg.views, size, list(cfg.radius), list(cfg.elevation), cfg.fovy, cfg.expert_steps, cfg.azimuth_span)
    check_options(spec, cfg.views, cfg.radius, cfg.elevation, cfg.fovy, cfg.azimuth_span)
    if root.exists() and not root.is_dir():
        raise PixioError(f"{root} is a file: give a folder for the capture (nothing was changed)")
    if root.is_dir() and any(root.iterdir()):
        if not (root / "capture.json").is_file():
            raise PixioError(f"{root} holds something other than a capture: refusing to write there (nothing changed)")
        meta = _read_capture(root)
        if not cfg.append:
            raise PixioError(f"{root} already holds {len(meta['scenes'])} scenes: pass append=true to add more")
        if meta["env"] != spec.to_dict() or meta["options"] != _options(rest):
            raise PixioError(f"{root} was captured with other settings: capture into a new folder")
    else:
        meta = {"format": FORMAT, "env": spec.to_dict(), "options": _options(rest), "scenes": [], "seeds": []}
    start = cfg.seed if cfg.seed is not None else (max(meta["seeds"], default=-1) + 1)
    jobs = [(str(root / f"scene_{len(meta['scenes']) + i:06d}"), start + i) for i in range(cfg.scenes)]
    root.mkdir(parents=True, exist_ok=True)

    from tqdm import tqdm

    done = 0
    bar = tqdm(total=len(jobs), desc=f"capture {spec.name}", unit="scene", disable=not cfg.progress, file=sys.stderr)
    try:
        if cfg.workers <= 1:
            capturer = SceneCapturer(spec, *rest)
            try:
                for folder, seed in jobs:
                    write_scene(Path(folder), *capturer.capture(seed))
                    _record(root, meta, folder, seed)
                    done += 1
                    bar.update(1)
            finally:
                capturer.close()
        else:
            ctx = mp.get_context("spawn")
            with ctx.Pool(cfg.workers, initializer=_init_worker, initargs=((spec.to_dict(), rest),)) as pool:
                seeds = dict(jobs)
                for folder in pool.imap(_capture_one, jobs):
                    _record(root, meta, folder, seeds[folder])
                    done += 1
                    bar.update(1)
    finally:
        bar.close()
    print(f"{root}: {done} scenes x {cfg.views} views written, {len(meta['scenes'])} in total")
    return 0


def _options(rest) -> dict:
    views, size, radius, elevation, fovy, expert_steps, azimuth_span = rest
    options = {
        "views": views,
        "image_size": list(size) if not isinstance(size, int) else [size, size],
        "radius": radius,
        "elevation_deg": elevation,
        "fovy_deg": fovy,
        "expert_steps": expert_steps,
    }
    if azimuth_span != 360:  # only when set, so that folders captured before the option still append
        options["azimuth_span_deg"] = azimuth_span
    return options


def _record(root: Path, meta: dict, folder: str, seed: int) -> None:
    meta["scenes"].append(Path(folder).name)
    meta["seeds"].append(int(seed))
    write_json(root / "capture.json", meta)
