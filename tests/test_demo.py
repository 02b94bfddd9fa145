"""`pixio-robot demo` at its smallest settings: every output exists and reads back with the
library that owns its format; interrupted stages leave nothing behind; no clobbering."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from pixio_robot.cli import main

SMALL = ["demos=2", "epochs=2", "episodes=2", "views=2", "workers=1", "progress=false"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """A demo interrupted (Ctrl-C) in its second stage, then continued by the same command."""
    from demo import pipeline

    out = tmp_path_factory.mktemp("demo") / "run"
    real = pipeline.STAGES

    def interrupted(cfg, out, done):
        (out / "policy").mkdir()
        (out / "policy" / "half-written.safetensors").write_bytes(b"\0" * 10)
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            pipeline,
            "STAGES",
            tuple(s if s.name != "policy" else s.__class__(s.name, s.title, interrupted) for s in real),
        )
        code = main(["demo", f"out={out}", *SMALL])
    after_interrupt = {
        "code": code,
        "policy_exists": (out / "policy").exists(),
        "done": list(json.loads((out / "demo.json").read_text())["done"]),
        "dataset_files": {p: p.stat().st_mtime_ns for p in (out / "dataset").rglob("*") if p.is_file()},
    }
    assert main(["demo", f"out={out}", *SMALL]) == 0
    return out, after_interrupt


def test_demo_outputs_read_back(demo_run):
    demo_run, _ = demo_run
    from pixio_robot.deps import open3d

    o3d = open3d()
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from pixio_robot.viz import rrd_entities

    summary = json.loads((demo_run / "summary.json").read_text())
    files = summary["files"]
    lo, hi = summary["ci95"]
    assert 0.0 <= lo <= summary["success_rate"] <= hi <= 1.0
    result = json.loads(open(files["result"]).read())
    assert result["episodes"] == 2 and result["success_rate"] == summary["success_rate"]

    dataset = LeRobotDataset("local/demo", root=files["dataset"])
    assert dataset.num_episodes == 2
    frame = dataset[0]
    assert frame["observation.images.front"].shape[-2:] == (128, 128)  # the default task: push, front

    cloud = o3d.io.read_point_cloud(files["point_cloud"])
    assert len(cloud.points) > 100 and len(cloud.colors) == len(cloud.points)
    assert any(e.startswith("/world/cameras/") for e in rrd_entities(files["scene_recording"]))
    assert rrd_entities(files["policy_recording"])

    for key in ("points_rel", "depth_rel", "pose_auc5", "chamfer", "fscore"):
        assert np.isfinite(summary["reconstruction"][key]), key
    # monocular depth of the scene's views: scored, written in mm, placed in the world by the cameras
    depth = summary["depth"]
    assert depth["views"] == 2 and 0 <= depth["d1"] <= 1 and np.isfinite(depth["abs_rel"])
    assert "/world/cameras/view_001/depth" in rrd_entities(files["depth_recording"])
    assert len(o3d.io.read_point_cloud(files["depth_point_cloud"]).points) > 100
    from PIL import Image

    png = np.asarray(Image.open(Path(files["depth_recording"]).parent / "view_000_depth.png"))
    assert png.dtype == np.uint16 and png.shape == (128, 128) and png.max() > 0
    assert len(files["videos"]) == 2 and all(Path(v).is_file() for v in files["videos"])
    for png in (files["success_chart"], files["loss_plot"]):
        assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_demo_does_not_clobber_a_finished_run(demo_run, capsys):
    demo_run, _ = demo_run
    before = {p: p.stat().st_mtime_ns for p in demo_run.rglob("*") if p.is_file()}
    assert main(["demo", f"out={demo_run}", *SMALL]) == 2
    assert "finished demo run" in capsys.readouterr().err
    assert before == {p: p.stat().st_mtime_ns for p in demo_run.rglob("*") if p.is_file()}


def test_interrupted_stage_is_removed_and_the_run_continues(demo_run):
    out, first = demo_run
    assert first["code"] == 130
    assert not first["policy_exists"]  # the half-written stage was removed on the way out
    assert first["done"] == ["dataset"]
    # continuing kept the finished stage as it was and redid the interrupted one
    assert first["dataset_files"]
    assert all(p.stat().st_mtime_ns == t for p, t in first["dataset_files"].items())
    assert not (out / "policy" / "half-written.safetensors").exists()
    assert (out / "policy" / "checkpoints" / "best").is_dir()


def test_unfinished_run_with_other_options_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["demo", f"out={out}", *SMALL]) == 2
    assert "holds something other than a demo run" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_unknown_task_or_head_and_bad_noise_are_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    for option, message in (
        ("task=metaworld/fly", "unknown MetaWorld task 'fly'"),
        ("policy_head=mlp", "unknown head 'mlp'"),
        ("noise=-1", "noise=-1.0: give a finite standard deviation"),
        ("mistakes=0.5", "mistakes=0.5: only the grasping tasks (pick_place, stack)"),  # the default task: push
        ("mistakes=2", "mistakes=2.0: give a probability per episode between 0 and 1"),
        ("consecutive=0", "consecutive=0: use 1 or more"),
    ):
        assert main(["demo", f"out={out}", option, *SMALL]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()


def test_a_run_with_no_finished_stage_takes_the_new_options(tmp_path):
    from demo.commands import DemoConfig
    from demo.pipeline import _open

    out = tmp_path / "run"
    _open(DemoConfig(out=str(out), task="reach"))  # as a run that failed in its first stage leaves it
    _, state = _open(DemoConfig(out=str(out), task="push"))
    assert state["options"]["task"] == "push" and state["done"] == {}


def test_the_default_folder_continues_the_newest_unfinished_run(tmp_path, monkeypatch):
    from demo.commands import DemoConfig
    from demo.pipeline import _open

    monkeypatch.chdir(tmp_path)
    cfg = DemoConfig()
    first, state = _open(cfg)
    assert first == Path("outputs/demo/run-1")
    assert _open(cfg)[0] == first  # the same command again: the same run
    assert _open(dataclasses.replace(cfg, demos=3))[0] == Path("outputs/demo/run-2")  # other options: a new one
    (Path("outputs/demo/run-2") / "summary.json").write_text("{}")  # finished
    assert _open(dataclasses.replace(cfg, demos=3))[0] == Path("outputs/demo/run-3")


def test_default_cameras_follow_the_task_and_an_explicit_list_wins():
    from demo.commands import DemoConfig
    from demo.pipeline import _cameras

    assert _cameras(DemoConfig(task="push")) == ["front"]
    assert _cameras(DemoConfig(task="pick_place")) == ["front", "wrist"]  # the wrist view is what made it work
    assert _cameras(DemoConfig(task="metaworld/drawer-open")) == ["corner2"]
    assert _cameras(DemoConfig(task="pick_place", cameras=["front"])) == ["front"]


def test_pick_place_records_recoveries_by_default_and_an_explicit_value_wins():
    from demo.commands import DemoConfig
    from demo.pipeline import _mistakes

    assert _mistakes(DemoConfig(task="pick_place")) == 1.0  # 76% against 54% without (README)
    assert _mistakes(DemoConfig(task="push")) == 0.0
    assert _mistakes(DemoConfig(task="pick_place", mistakes=0)) == 0.0


def test_pick_place_trains_80_epochs_by_default_and_an_explicit_value_wins():
    from demo.commands import DemoConfig
    from demo.pipeline import _epochs

    assert _epochs(DemoConfig(task="pick_place")) == 80  # as good as 100 on the validation seeds (README)
    assert _epochs(DemoConfig(task="push")) == 100
    assert _epochs(DemoConfig(task="pick_place", epochs=100)) == 100


def test_pick_place_trains_on_runs_of_16_frames_by_default_and_an_explicit_value_wins():
    from demo.commands import DemoConfig
    from demo.pipeline import _consecutive

    assert _consecutive(DemoConfig(task="pick_place")) == 16  # half the training time (README)
    assert _consecutive(DemoConfig(task="push")) == 1
    assert _consecutive(DemoConfig(task="pick_place", consecutive=1)) == 1
