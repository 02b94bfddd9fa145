"""Demonstration datasets: lerobot reads them back intact, appends, refusals, interruptions,
parallel collection, and Rerun replays."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import envs
from envs.dataset import ENV_FILE, VIDEO_CODEC, dataset_spec, load_dataset, read_env_metadata, video_backend
from envs.experts import make_expert
from envs.runner import rollout, run_episodes
from pixio_robot.cli import main
from pixio_robot.errors import PixioError
from pixio_robot.journal import JOURNAL
from pixio_robot.viz import rrd_entities

COLLECT = ["collect", "env=push", "cameras=[front,wrist]", "image_size=48", "progress=false"]


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demos") / "push"
    assert main([*COLLECT, "episodes=2", f"out={root}"]) == 0
    return root


def lerobot(root: Path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset("local/test", root=root, video_backend=video_backend())


def test_recorded_dataset_reloads_with_lerobot_frames_actions_and_boundaries_intact(dataset):
    ds = lerobot(dataset)
    meta = read_env_metadata(dataset)
    assert ds.num_episodes == 2 and ds.fps == 20 and meta["fps"] == 20
    lengths = [e["length"] for e in meta["episodes"]]
    assert ds.num_frames == sum(lengths) == len(ds)
    assert list(ds.meta.episodes["dataset_from_index"]) == [0, lengths[0]]
    assert list(ds.meta.episodes["dataset_to_index"]) == [lengths[0], sum(lengths)]
    assert set(ds.meta.video_keys) == {"observation.images.front", "observation.images.wrist"}
    spec = dataset_spec(dataset)
    env = spec.make()
    obs, _ = env.reset(seed=meta["episodes"][0]["seed"])
    live = envs.observation_features(obs, list(meta["cameras"]))  # what a policy would be fed
    assert set(live) == {k for k in ds.meta.features if k.startswith("observation.")}
    for index, info in enumerate(meta["episodes"]):
        ep = rollout(env, make_expert(env), info["seed"], record=True)  # what was recorded, rendered again
        assert ep.success and ep.length == info["length"]
        start = int(ds.meta.episodes["dataset_from_index"][index])
        for t in range(ep.length):
            frame = ds[start + t]
            assert int(frame["episode_index"]) == index and int(frame["frame_index"]) == t
            assert frame["task"] == "push the cube onto the green target"
            assert np.allclose(frame["action"].numpy(), ep.actions[t])
            assert np.allclose(frame["observation.state"].numpy(), ep.states[t])
            assert bool(frame["next.done"]) == (t == ep.length - 1)
            for camera in ("front", "wrist"):
                decoded = frame[f"observation.images.{camera}"].permute(1, 2, 0).numpy() * 255
                error = np.abs(decoded - ep.images[camera][t]).mean()
                assert error < 8, f"{camera} frame {t}: mean error {error:.1f} of 255"
    env.close()


def test_env_metadata_rebuilds_the_environment(dataset):
    meta = read_env_metadata(dataset)
    spec = dataset_spec(dataset)
    assert spec.id == "pixio_robot/Push-v0" and spec.kwargs["cameras"] == ["front", "wrist"]
    assert meta["cameras"]["front"]["fixed"] and not meta["cameras"]["wrist"]["fixed"]
    assert np.asarray(meta["cameras"]["front"]["K"]).shape == (3, 3)
    assert meta["state_names"][0] == "tool_x" and meta["action_names"][-1] == "gripper"
    env = spec.make()
    assert env.unwrapped.cameras == {"front": (48, 48), "wrist": (48, 48)}
    env.close()
    spec.check_compatible(spec)
    with pytest.raises(PixioError, match="cameras"):
        spec.check_compatible(envs.EnvSpec.parse("push", cameras=["front"], image_size=48))


def test_replay_dataset_and_fresh_episode_to_rerun(dataset, tmp_path):
    assert main(["replay", str(dataset), "episodes=[0,1]", f"out={tmp_path / 'd.rrd'}"]) == 0
    entities = rrd_entities(tmp_path / "d.rrd")
    assert {"/cameras/front", "/cameras/wrist", "/action/dx", "/state/tool_z", "/world/cameras/front"} <= entities
    assert {"/world/tool_path/episode_0", "/world/tool_path/episode_1"} <= entities
    assert main(["replay", "reach", "cameras=[top]", "image_size=32", f"out={tmp_path / 'e.rrd'}"]) == 0
    assert {"/cameras/top", "/world/tool_path/episode_0", "/success"} <= rrd_entities(tmp_path / "e.rrd")
    assert main(["replay", str(dataset), "episodes=[5]", f"out={tmp_path / 'x.rrd'}"]) == 2
    assert not (tmp_path / "x.rrd").exists()


def test_append_adds_episodes_with_new_seeds_and_leaves_old_files(dataset, tmp_path):
    root = tmp_path / "push"
    import shutil

    shutil.copytree(dataset, root)
    before = snapshot(root)
    assert main([*COLLECT, "episodes=1", f"out={root}", "append=true"]) == 0
    after = snapshot(root)
    rewritten = {"meta/info.json", "meta/stats.json", ENV_FILE}
    assert all(after[k] == v for k, v in before.items() if k not in rewritten)
    meta = read_env_metadata(root)
    assert [e["seed"] for e in meta["episodes"]] == [0, 1, 2]
    ds = lerobot(root)
    assert ds.num_episodes == 3 and ds.num_frames == sum(e["length"] for e in meta["episodes"])
    ds[len(ds) - 1]  # the appended frames decode
    assert not (root / JOURNAL).exists()


def test_paths_holding_something_else_are_refused_and_left_untouched(dataset, tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    other = tmp_path / "other"
    other.mkdir()
    (other / "weights.bin").write_bytes(b"\x00\x01")
    for target in (a_file, other):
        assert main([*COLLECT, "episodes=1", f"out={target}"]) == 2
        assert "refusing" in capsys.readouterr().err
    assert a_file.read_text() == "keep me" and [p.name for p in other.iterdir()] == ["weights.bin"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    before = snapshot(dataset)
    assert main([*COLLECT, "episodes=1", f"out={dataset}"]) == 2  # an existing dataset needs append=true
    assert "append=true" in capsys.readouterr().err
    assert main([*COLLECT[:2], "cameras=[front]", "image_size=48", "episodes=1", f"out={dataset}", "append=true"]) == 2
    assert "cannot append" in capsys.readouterr().err
    for noise in ("nan", "inf", "-0.1"):
        assert main([*COLLECT, "episodes=1", f"out={dataset}", "append=true", f"noise={noise}"]) == 2
        err = capsys.readouterr().err
        assert "give a finite standard deviation >= 0" in err and err.count("\n") == 1, err
    assert main([*COLLECT, "episodes=1", f"out={dataset}", "append=true", "mistakes=0.5"]) == 2  # push
    err = capsys.readouterr().err
    assert "only the grasping tasks (pick_place, stack)" in err and err.count("\n") == 1, err
    assert snapshot(dataset) == before


def test_ctrl_c_keeps_every_finished_episode(tmp_path, monkeypatch):
    import envs.collect

    real = envs.collect.run_episodes

    def interrupted(*args, **kwargs):
        episodes = real(*args, **kwargs)
        yield next(episodes)
        yield next(episodes)
        episodes.close()
        raise KeyboardInterrupt

    monkeypatch.setattr(envs.collect, "run_episodes", interrupted)
    root = tmp_path / "reach"
    assert main(["collect", "env=reach", "cameras=[front]", "image_size=32", "episodes=10", f"out={root}"]) == 130
    ds = lerobot(root)
    assert ds.num_episodes == 2 and len(read_env_metadata(root)["episodes"]) == 2
    ds[len(ds) - 1]


def test_a_hard_kill_loses_only_the_unfinished_segment(tmp_path):
    root = tmp_path / "reach"
    args = ["collect", "env=reach", "cameras=[front]", "image_size=32", "episodes=500", "commit_every=3", "workers=2"]
    proc = subprocess.Popen([sys.executable, "-m", "pixio_robot.cli", *args, f"out={root}", "progress=false"])
    try:
        deadline = time.time() + 120
        # wait until a segment has been committed and the next one has written an episode
        while not (root / JOURNAL).exists() or not list(root.glob("data/chunk-000/file-001.parquet")):
            assert proc.poll() is None and time.time() < deadline, "collection did not get going"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    committed = json.loads((root / ENV_FILE).read_text())["episodes"]
    assert len(committed) >= 3 and len(committed) % 3 == 0
    # pre-training's reader rolls the interrupted segment back too, and reads the frames
    from pretrain.data import LeRobotFrames

    frames = LeRobotFrames(root, [])
    assert not (root / JOURNAL).exists() and len(frames) == sum(e["length"] for e in committed)
    frames.read(len(frames) - 1)
    ds = load_dataset(root)
    assert not (root / JOURNAL).exists()
    assert ds.num_episodes == len(committed)
    ds = lerobot(root)  # and lerobot reads it directly
    assert ds.num_episodes == len(committed) and ds.num_frames == sum(e["length"] for e in committed)
    ds[len(ds) - 1]
    # collecting again continues after the committed seeds
    assert main([*args[:4], "episodes=1", f"out={root}", "append=true", "progress=false"]) == 0
    assert read_env_metadata(root)["episodes"][-1]["seed"] == committed[-1]["seed"] + 1


def test_parallel_workers_give_the_same_episodes_in_seed_order():
    spec = envs.EnvSpec.parse("pick_place", cameras=["front"], image_size=32)
    serial = list(run_episodes(spec, [3, 1, 2], workers=1))
    parallel = list(run_episodes(spec, [3, 1, 2], workers=2))
    assert [e.seed for e in parallel] == [3, 1, 2]
    for a, b in zip(serial, parallel, strict=True):
        assert a.success and np.array_equal(a.actions, b.actions)
        assert np.array_equal(a.images["front"], b.images["front"])


class HoldStill:
    """A stand-in for a learned policy: the evaluation code drives it like the experts."""

    def __init__(self, env):
        self.dim = env.action_space.shape[0]
        self.resets: list[int | None] = []

    def reset(self, seed=None):
        self.resets.append(seed)

    def __call__(self, obs):
        assert obs["pixels"].shape == (32, 32, 3) and obs["agent_pos"].shape == (9,)
        return np.zeros(self.dim, np.float32)


def test_any_policy_runs_through_the_same_runner():
    spec = envs.EnvSpec.parse("reach", cameras=["top"], image_size=32, time_limit=5)
    made = []

    def factory(env):
        made.append(HoldStill(env))
        return made[-1]

    episodes = list(run_episodes(spec, [7, 8], make_policy=factory))
    assert isinstance(made[0], envs.Policy) and made[0].resets == [7, 8]
    assert [e.length for e in episodes] == [5, 5] and not any(e.success for e in episodes)
    assert episodes[0].images["top"].shape == (5, 32, 32, 3)


def test_every_segment_is_written_lossless(tmp_path):
    import av

    root = tmp_path / "reach"
    args = ["collect", "env=reach", "cameras=[front]", "image_size=32", "commit_every=1", "progress=false"]
    assert main([*args, "episodes=2", f"out={root}"]) == 0
    assert main([*args, "episodes=2", f"out={root}", "append=true"]) == 0  # a resumed dataset
    videos = sorted(root.glob("videos/**/*.mp4"))
    assert videos
    for video in videos:
        with av.open(str(video)) as f:
            stream = f.streams.video[0]
            assert (stream.codec_context.name, stream.codec_context.pix_fmt) == (
                VIDEO_CODEC["vcodec"],
                VIDEO_CODEC["pix_fmt"],
            ), video
