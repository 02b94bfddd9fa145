"""`render-frames`: pre-training shards of every task x difficulty x camera, readable by pretrain."""

from __future__ import annotations

import io
import json
import math
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from pixio_robot.cli import main
from pretrain.data import find_sources, shard_samples

SMALL = [
    "render-frames",
    "tasks=[reach,metaworld/drawer-open]",
    "cameras=[front,wrist]",
    "metaworld_cameras=[corner2]",
    "episodes=1",
    "frame_stride=5",
    "metaworld_time_limit=10",
    "image_size=64",
    "shard_size=7",
    "progress=false",
]


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    out = tmp_path_factory.mktemp("frames") / "suite"
    assert main([*SMALL, f"out={out}"]) == 0
    return out


def test_shards_hold_every_task_level_and_camera_shuffled_together(frames):
    meta = json.loads((frames / "frames.json").read_text())
    assert meta["format"] == "pixio_robot.envs.frames/1"
    assert set(meta["tasks"]) == {"reach/benchmark", "reach/hard", "metaworld/drawer-open"}
    shards = sorted(frames.glob("frames-*.tar"))
    assert len(shards) == meta["shards"] == math.ceil(meta["images"] / 7)
    samples = [(key, data) for shard in shards for _, key, data in shard_samples(str(shard))]
    assert len(samples) == meta["images"] == sum(t["frames"] for t in meta["tasks"].values())
    keys = [key.split("/", 1)[1] for key, _ in samples]
    assert len(set(keys)) == len(keys)
    for label, count in meta["tasks"].items():  # every camera sees every kept step
        setting = label.replace("/", "_")
        per_camera = Counter(k.rsplit("_", 2)[1] for k in keys if k.rsplit("_", 3)[0] == setting)
        assert sum(per_camera.values()) == count["frames"] and len(set(per_camera.values())) == 1
    cameras = {k.rsplit("_", 2)[1] for k in keys}
    assert cameras == {"front", "wrist", "corner2"}
    first = {k.rsplit("_", 3)[0] for k in keys[:7]}
    assert len(first) > 1, "a shard must mix tasks: the loader streams it in order"
    image = Image.open(io.BytesIO(samples[0][1]))
    assert image.format == "JPEG" and image.size == (64, 64)
    assert np.asarray(image.convert("RGB")).std() > 5  # a rendered scene, not a blank frame
    assert find_sources([str(frames)]).shards == [str(s) for s in shards]


def test_the_same_command_writes_the_same_bytes(frames, tmp_path):
    again = tmp_path / "again"
    assert main([*SMALL, "tasks=[reach]", "difficulties=[hard]", f"out={again}"]) == 0
    ours = {key.split("/", 1)[1]: data for s in sorted(frames.glob("*.tar")) for _, key, data in shard_samples(str(s))}
    theirs = {key.split("/", 1)[1]: data for s in sorted(again.glob("*.tar")) for _, key, data in shard_samples(str(s))}
    assert theirs and all(ours[name] == data for name, data in theirs.items())


@pytest.mark.parametrize(
    "option, message",
    [
        ("tasks=[push,pusher]", "unknown environment 'pusher'"),
        ("difficulties=[easy]", "difficulties=['easy']: choose among benchmark, hard"),
        ("cameras=[front,elbow]", "elbow"),
        ("episodes=0", "episodes=0"),
    ],
)
def test_bad_options_are_refused_before_anything_is_written(tmp_path, capsys, option, message):
    out = tmp_path / "frames"
    assert main([*SMALL, option, f"out={out}"]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_left_alone(frames, capsys):
    before = {p: p.stat().st_mtime_ns for p in frames.iterdir()}
    assert main([*SMALL, f"out={frames}"]) == 2
    assert "exists: choose another out=" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in frames.iterdir()} == before
