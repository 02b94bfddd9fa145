"""Rerun recordings, scalar logs and image grids."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import rerun as rr

from pixio_robot import PixioError
from pixio_robot.harness import ScalarLog
from pixio_robot.images import image_grid, save_png
from pixio_robot.viz import ply_to_recording, rerun_recording, rrd_entities


def test_recording_is_written_atomically_and_reads_back(tmp_path):
    path = tmp_path / "run.rrd"
    with rerun_recording(path) as rec:
        rec.log("world/points", rr.Points3D(np.zeros((4, 3))), static=True)
        assert not path.exists()  # only a temporary file while logging
        rec.log("camera/image", rr.Image(np.zeros((8, 8, 3), np.uint8)))
    assert rrd_entities(path) == {"/world/points", "/camera/image"}
    with pytest.raises(PixioError, match=r"\.rrd"), rerun_recording(tmp_path / "x.txt"):
        pass


def test_interrupted_recording_leaves_nothing(tmp_path):
    path = tmp_path / "run.rrd"
    with pytest.raises(KeyboardInterrupt), rerun_recording(path) as rec:
        rec.log("a", rr.Scalars([1.0]))
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_scalar_log_resume_drops_redone_steps(tmp_path):
    path = tmp_path / "metrics.csv"
    with ScalarLog(path) as log:
        for step in range(5):
            log.log(step, loss=1.0 / (step + 1), lr=0.1)
    with ScalarLog(path, resume_step=2) as log:
        log.log(3, loss=0.3, lr=0.1)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3] and rows[-1]["loss"] == "0.3"


def test_scalar_log_to_rerun(tmp_path):
    with rerun_recording(tmp_path / "m.rrd") as rec, ScalarLog(tmp_path / "m.csv", rec) as log:
        log.log(0, loss=2.0)
    assert rrd_entities(tmp_path / "m.rrd") == {"/metrics/loss"}


def test_image_grid_and_png(tmp_path):
    a = np.zeros((10, 12, 3), np.uint8)
    b = np.ones((10, 12), np.float32)
    grid = image_grid([[a, b], [b, a]], labels=["input", "target"])
    assert grid.dtype == np.uint8 and grid.shape == (14 + 2 * 12 + 2, 2 * 14 + 2, 3)
    out = save_png(tmp_path / "grid.png", grid)
    from PIL import Image

    assert np.asarray(Image.open(out)).shape == grid.shape


def test_ply_becomes_a_recording(tmp_path):
    from pixio_robot.deps import open3d

    o3d = open3d()

    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.random.rand(20, 3)))
    cloud.colors = o3d.utility.Vector3dVector(np.random.rand(20, 3))
    o3d.io.write_point_cloud(str(tmp_path / "c.ply"), cloud)
    rrd = ply_to_recording(tmp_path / "c.ply", tmp_path / "c.rrd")
    assert "/world/c" in rrd_entities(rrd)


def test_view_names_a_broken_recording_and_a_missing_display(tmp_path, capsys, monkeypatch):
    import rerun as rr

    from pixio_robot.cli import main
    from pixio_robot.viz import rerun_recording

    broken = tmp_path / "broken.rrd"
    broken.write_bytes(b"RRF2 not really a recording")
    assert main(["view", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "broken.rrd: not a readable Rerun recording" in err and err.count("\n") == 1, err
    good = tmp_path / "good.rrd"
    with rerun_recording(good) as rec:
        rec.log("x", rr.Points3D(np.zeros((1, 3))))
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert main(["view", str(good)]) == 2
    err = capsys.readouterr().err
    assert "no display on this machine" in err and "web=true" in err and err.count("\n") == 1, err


def test_open3d_runs_on_libusb_from_pypi():
    """open3d's libusb comes from the libusb-package wheel, not the system (CI's FFmpeg
    packages install a system copy, so this checks which one the process actually mapped)."""
    import subprocess
    import sys

    code = (
        "from pixio_robot.deps import open3d; open3d();"
        "maps = open('/proc/self/maps').read();"
        "print(any('libusb_package' in line for line in maps.splitlines()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
