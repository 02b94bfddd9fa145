"""Rerun recordings and point-cloud views, shared by every package.

- `rerun_recording(path)`: a Rerun `RecordingStream` that writes `path` (.rrd) atomically;
- `rrd_entities(path)`: the entity paths a recording holds (what tests check);
- `cloud_snapshot`: a PNG still of a coloured point cloud with its cameras;
- `ply_to_recording` and `view` (the `pixio-robot view` command).

Image grids and PNGs are in `pixio_robot.images`, training scalars in `pixio_robot.harness`.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .deps import open3d
from .errors import PixioError


@contextlib.contextmanager
def rerun_recording(path: str | os.PathLike, application_id: str = "pixio_robot") -> Iterator:
    """Log into the yielded stream; `path` appears complete when the block ends, never half."""
    import rerun as rr

    path = Path(path)
    if path.suffix != ".rrd":
        raise PixioError(f"{path}: Rerun recordings are .rrd files: name it *.rrd")
    with atomic_path(path) as tmp:
        rec = rr.RecordingStream(application_id)
        rec.save(str(tmp))
        try:
            yield rec
        finally:
            rec.flush()
            rec.disconnect()


def rrd_entities(path: str | os.PathLike) -> set[str]:
    """Entity paths logged in a recording (without Rerun's own `/__properties`)."""
    from rerun.chunk import RrdReader

    try:
        chunks = list(RrdReader(str(path)).stream())
    except Exception as e:
        raise PixioError(f"{path}: not a readable Rerun recording ({e})") from e
    return {c.entity_path for c in chunks if not c.entity_path.startswith("/__")}


def cloud_snapshot(
    points: np.ndarray,
    colors: np.ndarray,
    cam2world: np.ndarray | None = None,
    title: str = "",
    max_points: int = 30000,
) -> bytes:
    """PNG of a coloured point cloud seen from above and behind the first camera, with the
    camera centres and viewing directions: a still of what a recording holds, for reports and
    machines without a display. Points in OpenCV camera axes (y down, z forward)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(points) > 100:  # a few far-off stray points would shrink the scene to a dot
        lo, hi = np.percentile(points, [3, 97], axis=0)
        margin = 0.1 * (hi - lo)
        inside = np.all((points >= lo - margin) & (points <= hi + margin), axis=1)
        points, colors = points[inside], np.asarray(colors)[inside]
    if len(points) > max_points:
        keep = np.random.default_rng(0).choice(len(points), max_points, replace=False)
        points, colors = points[keep], colors[keep]
    fig = plt.figure(figsize=(6, 5), dpi=120)
    ax = fig.add_subplot(projection="3d")
    # x right, z forward, -y up: the first camera's view, lifted
    ax.scatter(points[:, 0], points[:, 2], -points[:, 1], c=np.asarray(colors) / 255.0, s=1.0, linewidths=0)
    if cam2world is not None:
        centres, forward = cam2world[:, :3, 3], cam2world[:, :3, 2]
        span = float(np.ptp(points, axis=0).max()) if len(points) else 1.0
        tips = centres + 0.15 * span * forward
        ax.scatter(centres[:, 0], centres[:, 2], -centres[:, 1], c="red", s=25, marker="^")
        for c, t in zip(centres, tips, strict=True):
            ax.plot([c[0], t[0]], [c[2], t[2]], [-c[1], -t[1]], color="red", linewidth=1.5)
    ax.set_xlabel("x (m)")
    ax.set_ylabel("z (m)")
    ax.set_zlabel("-y (m)")
    ax.view_init(elev=25, azim=-70)
    with contextlib.suppress(AttributeError, ValueError):
        ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def ply_to_recording(ply: str | os.PathLike, rrd: str | os.PathLike) -> Path:
    """A point cloud file as a Rerun recording (points with their colours)."""
    o3d = open3d()
    import rerun as rr

    cloud = o3d.io.read_point_cloud(str(ply))
    if cloud.is_empty():
        raise PixioError(f"{ply}: no points could be read: is it a point-cloud .ply/.pcd file?")
    points = np.asarray(cloud.points, dtype=np.float32)
    colors = np.asarray(cloud.colors, dtype=np.float32) if cloud.has_colors() else None
    with rerun_recording(rrd) as rec:
        rec.log("world", rr.ViewCoordinates.RIGHT_HAND_Z_UP, static=True)
        rec.log(f"world/{Path(ply).stem}", rr.Points3D(points, colors=colors), static=True)
    return Path(rrd)


def view(cfg) -> int:
    """Open a .rrd recording or a point cloud in the Rerun viewer (native, or web on localhost)."""
    import subprocess
    import sys
    import tempfile

    path = Path(cfg.file)
    if not path.exists():
        raise PixioError(f"{path}: no such file")
    with tempfile.TemporaryDirectory() as tmp:
        if path.suffix in (".ply", ".pcd", ".xyz"):
            path = ply_to_recording(path, Path(tmp) / f"{path.stem}.rrd")
        elif path.suffix != ".rrd":
            raise PixioError(f"{path}: view opens .rrd recordings and .ply/.pcd point clouds")
        else:
            rrd_entities(path)  # a broken file is named here, not by the viewer's own error
        if not cfg.web and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise PixioError(
                f"no display on this machine to open {path} in a window: pass web=true to serve the web viewer "
                "on localhost (forward its port), or copy the file to a machine with a display"
            )
        cmd = [sys.executable, "-m", "rerun", str(path)]
        if cfg.web:
            cmd += [
                "--web-viewer",
                "--bind",
                "127.0.0.1",
                "--port",
                str(cfg.port),
                "--web-viewer-port",
                str(cfg.web_port),
            ]
            print(f"web viewer on http://127.0.0.1:{cfg.web_port} (Ctrl-C to stop)")
        return subprocess.call(cmd)
