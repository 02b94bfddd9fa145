"""Training policies: the loss falls, the feature cache is reused and rebuilt when it must be,
checkpoints reload to identical actions (ours and LeRobot's loaders), resuming repeats the
uninterrupted run, and bad input is refused with nothing changed."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from policies_helpers import IMAGE_SIZE, recorded_push, snapshot, train_args
from safetensors.torch import load_file

import pixio_robot
from pixio_robot.cli import main
from pixio_robot.errors import PixioError
from pixio_robot.harness import list_checkpoints
from pixio_robot.viz import rrd_entities


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return recorded_push(tmp_path_factory)


@pytest.fixture(scope="module")
def push_with_state(tmp_path_factory) -> Path:
    """Two push episodes recorded with the object state (observation.environment_state)."""
    data = tmp_path_factory.getbasetemp() / "policies_data" / "push_with_state"
    collect = ["collect", "env=push", "environment_state=true", f"image_size={IMAGE_SIZE}", "episodes=2"]
    assert main([*collect, f"out={data}", "progress=false"]) == 0
    return data


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def observations(dataset: Path, steps: int = 6) -> list[dict]:
    """A real observation sequence: an expert episode of the dataset's environment."""
    import envs

    env = envs.dataset_spec(dataset).make()
    expert = envs.make_expert(env)
    obs, _ = env.reset(seed=123)
    expert.reset(123)
    seq = []
    for _ in range(steps):
        seq.append(
            {
                "observation.images.front": torch.from_numpy(obs["pixels"]).permute(2, 0, 1)[None].float() / 255,
                "observation.state": torch.from_numpy(obs["agent_pos"])[None],
            }
        )
        obs, *_ = env.step(expert(obs))
    env.close()
    return seq


def actions(policy, seq: list[dict]) -> torch.Tensor:
    policy.eval()
    policy.reset()
    return torch.cat([policy.select_action(batch) for batch in seq])


def test_cortexbench_head_loss_falls_and_run_folder_is_complete(dataset, tmp_path):
    out = tmp_path / "run"
    assert main(train_args(dataset, out, "epochs=12", "batch_size=32", "seed=1", "test_episodes=2")) == 0
    s = summary(out)
    # test_episodes: the best checkpoint evaluated on held-out seeds, a table cell in one command
    assert s["test"]["episodes"] == 2 and json.loads((out / "eval/result.json").read_text())["episodes"] == 2
    assert s["epochs"] == 12 and s["cache"][0]["path"].startswith(str(dataset / "features"))
    assert s["final_loss"] < 0.5 * s["first_loss"], (s["first_loss"], s["final_loss"])
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 13))
    assert float(rows[-1]["loss"]) == pytest.approx(s["final_loss"], rel=1e-4)
    for name in ("best", "last"):
        folder = out / "checkpoints" / name
        assert {"config.json", "model.safetensors", "policy_preprocessor.json"} <= {p.name for p in folder.iterdir()}
    saved = [step for step, _ in list_checkpoints(out)]  # epochs 10 (save_every) and 12 (the end)
    assert saved == [s["steps"] * 10 // 12, s["steps"]]
    config = json.loads((out / "checkpoints/best/config.json").read_text())
    assert config["type"] == "pixio" and config["head"]["hidden"] == [256, 256, 256] and config["n_obs_steps"] == 3
    assert config["env"]["id"] == "pixio_robot/Push-v0" and config["image_size"] == [IMAGE_SIZE, IMAGE_SIZE]
    assert {"/metrics/loss", "/metrics/samples_per_s"} <= rrd_entities(out / "training.rrd")


def test_cosine_schedule_decays_the_learning_rate_to_zero_and_constant_keeps_it(dataset, tmp_path):
    logged = {}
    for schedule in ("constant", "cosine"):
        out = tmp_path / schedule
        assert main(train_args(dataset, out, "epochs=4", "batch_size=32", f"lr_schedule={schedule}")) == 0
        with open(out / "metrics.csv") as f:
            logged[schedule] = [float(r["lr"]) for r in csv.DictReader(f)]
    assert logged["constant"] == [1e-3] * 4
    lrs = logged["cosine"]
    assert lrs[0] < 1e-3 and all(a > b for a, b in zip(lrs, lrs[1:], strict=False)), lrs
    assert lrs[-1] < 1e-5, lrs  # logged at each epoch's last step: the run's last is 1% of the peak


def test_consecutive_orders_every_frame_once_in_runs_of_one_episode():
    """`consecutive=k`: an epoch is still every frame once, now in runs of up to k consecutive
    frames of one episode (their history windows overlap), cut at a new offset each epoch."""
    from policies.train import epoch_order

    class Episodes:  # what epoch_order reads of Demonstrations: lengths 37, 5 and 50
        episode_start = np.repeat([0, 37, 42], [37, 5, 50])

        def __len__(self):
            return 92

    def runs(order):  # positions where the next frame follows in the same episode
        same = (order[1:] == order[:-1] + 1) & (Episodes.episode_start[order[1:]] == Episodes.episode_start[order[:-1]])
        return same.float().mean().item()

    orders = {}
    for k, seed in ((1, 0), (8, 0), (8, 1)):
        order = epoch_order(Episodes(), k, torch.Generator().manual_seed(seed))
        assert sorted(order.tolist()) == list(range(92))
        orders[k, seed] = order
    assert runs(orders[1, 0]) < 0.1 and runs(orders[8, 0]) > 0.75 and runs(orders[8, 1]) > 0.75
    assert not torch.equal(orders[8, 0], orders[8, 1])  # another epoch, other cuts and order


def test_cache_reused_on_second_run_and_rebuilt_when_the_checkpoint_changes(dataset, tmp_path):
    from policies import cache_features

    encoder = tmp_path / "encoder.safetensors"
    torch.manual_seed(0)
    pixio_robot.save_encoder(pixio_robot.create_encoder("vitn16"), encoder)
    [first] = cache_features(dataset, str(encoder), progress=False)
    [again] = cache_features(dataset, str(encoder), progress=False)
    assert first.built and not again.built and again.path == first.path
    n_frames = json.loads((dataset / "meta/info.json").read_text())["total_frames"]
    assert first.arrays["global"].shape == (n_frames, 128) and isinstance(again.arrays["global"], np.memmap)
    stamp = (first.path / "global.npy").stat().st_mtime_ns

    out = tmp_path / "run"
    assert main(train_args(dataset, out, f"encoder={encoder}", "epochs=1")) == 0
    assert summary(out)["cache"] == [{"path": str(first.path), "built": False}]
    assert (first.path / "global.npy").stat().st_mtime_ns == stamp

    torch.manual_seed(1)  # same file, other weights: another key, a new cache
    pixio_robot.save_encoder(pixio_robot.create_encoder("vitn16"), encoder)
    [changed] = cache_features(dataset, str(encoder), progress=False)
    assert changed.built and changed.path != first.path and first.path.exists()
    assert not np.allclose(np.asarray(changed.arrays["global"]), np.asarray(first.arrays["global"]))
    manifest = json.loads((changed.path / "manifest.json").read_text())
    assert (
        manifest["key"]["encoder_sha256"]
        != json.loads((first.path / "manifest.json").read_text())["key"]["encoder_sha256"]
    )

    # A head that reads patch tokens adds them to the cache of the same key.
    [patches] = cache_features(dataset, str(encoder), patches=True, progress=False)
    assert patches.built and patches.path == changed.path and patches.arrays["patches"].shape[1:] == (4, 4, 128)


def test_cache_of_another_checkpoint_is_refused_and_left_alone(dataset, tmp_path, capsys):
    from policies import cache_features

    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    for seed, path in ((0, a), (1, b)):
        torch.manual_seed(seed)
        pixio_robot.save_encoder(pixio_robot.create_encoder("vitn16"), path)
    folder = tmp_path / "my_cache"
    cache_features(dataset, str(a), location=str(folder), progress=False)
    before, data_before = snapshot(folder), snapshot(dataset)
    with pytest.raises(PixioError, match="another encoder checkpoint"):
        cache_features(dataset, str(b), location=str(folder), progress=False)
    out = tmp_path / "run"
    assert main(train_args(dataset, out, f"encoder={b}", f"cache={folder}")) == 2
    assert "computed with another encoder checkpoint" in capsys.readouterr().err
    assert snapshot(folder) == before and snapshot(dataset) == data_before and not out.exists()


@pytest.mark.parametrize("head", ["cortexbench", "keypoints", "spatial", "chunking"])
def test_saved_policy_reloads_to_identical_actions(dataset, tmp_path, head):
    from lerobot.configs import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    from policies import ChunkingConfig, TrainPolicyConfig, load_policy, train_policy

    # the function forms: a config object, or its fields as keywords (a head by name or config)
    if head == "chunking":
        cfg = TrainPolicyConfig(dataset=str(dataset), encoder="vitn16", head=ChunkingConfig(chunk_size=4))
        cfg.epochs, cfg.batch_size, cfg.out, cfg.progress = 2, 32, str(tmp_path / "run"), False
        result = train_policy(cfg)
    else:
        kwargs = {"epochs": 2, "batch_size": 32, "out": str(tmp_path / "run"), "progress": False}
        result = train_policy(dataset=str(dataset), encoder="vitn16", head=head, **kwargs)
    assert json.loads((result.best / "config.json").read_text())["head"]["name"] == head
    seq = observations(dataset)
    ours = load_policy(result.best)
    reference = actions(ours, seq)
    assert reference.shape == (len(seq), 5) and torch.isfinite(reference).all()
    assert torch.equal(actions(load_policy(result.best), seq), reference)  # reloading again: same
    # LeRobot's own loaders: the config registry and the policy class its factory resolves.
    config = PreTrainedConfig.from_pretrained(result.best)
    lerobot_policy = get_policy_class(config.type).from_pretrained(result.best, config=config)
    assert torch.equal(actions(lerobot_policy, seq), reference)
    pre, post = make_pre_post_processors(config, pretrained_path=str(result.best))
    lerobot_policy.reset()
    via_pipeline = [post(lerobot_policy.select_action(pre({k: v[0] for k, v in batch.items()}))) for batch in seq]
    assert torch.equal(torch.cat(via_pipeline), reference)
    if head == "chunking":  # the temporal ensemble follows the chunks' device (it failed on CUDA)
        ours.reset()
        for _ in range(3):
            action = ours._ensembler.update(torch.randn(1, 4, 5, device="meta"))
        assert action.device.type == "meta" and action.shape == (1, 5)


def test_resumed_run_matches_the_uninterrupted_one(dataset, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    common = ["batch_size=32", "save_every=1", "seed=3"]
    assert main(train_args(dataset, whole, "epochs=4", *common)) == 0
    assert main(train_args(dataset, split, "epochs=2", *common)) == 0
    first = json.loads((split / "summary.json").read_text())["seconds"]
    saved = json.loads(torch.load(list_checkpoints(split)[-1][1], weights_only=True)["training"])["seconds"]
    assert 0 < saved <= first
    assert main(train_args(dataset, split, "epochs=4", "resume=true", *common)) == 0
    a = load_file(str(whole / "checkpoints/last/model.safetensors"))
    b = load_file(str(split / "checkpoints/last/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the resumed run's time includes the first process's, up to the checkpoint it resumed from
    assert json.loads((split / "summary.json").read_text())["seconds"] > saved
    with open(split / "metrics.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3, 4]


def test_a_moved_run_resumes_and_a_damaged_last_checkpoint_falls_back(dataset, tmp_path, capsys):
    whole, run = tmp_path / "whole", tmp_path / "run"
    common = ["batch_size=32", "save_every=1", "seed=3"]
    assert main(train_args(dataset, whole, "epochs=3", *common)) == 0
    assert main(train_args(dataset, run, "epochs=2", *common)) == 0
    moved = tmp_path / "moved"
    shutil.move(run, moved)  # run folders are moved and copied between machines
    # the last checkpoint is damaged (a full disk, a bad copy): the one before it is used
    (_, first), (_, last) = list_checkpoints(moved)
    last.write_bytes(last.read_bytes()[:100])
    assert main(train_args(dataset, moved, "epochs=3", "resume=true", *common)) == 0
    assert f"{last.name}: not a readable training checkpoint" in capsys.readouterr().err
    # epoch 2 is redone from the epoch-1 checkpoint, exactly as the uninterrupted run did it
    a = load_file(str(whole / "checkpoints/last/model.safetensors"))
    b = load_file(str(moved / "checkpoints/last/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_truncated_policy_is_refused_by_eval_policy_in_one_line(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(dataset, run, "epochs=1", "batch_size=32")) == 0
    weights = run / "checkpoints/best/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    before = snapshot(run)
    capsys.readouterr()
    args = [f"policy={run / 'checkpoints/best'}", "episodes=1", f"out={tmp_path / 'eval'}", "progress=false"]
    assert main(["eval-policy", *args]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors is truncated or corrupt" in err and err.count("\n") == 1, err
    assert snapshot(run) == before and not (tmp_path / "eval").exists()


def test_training_without_cache_and_with_a_timm_backbone(dataset, tmp_path):
    out = tmp_path / "images"
    assert main(train_args(dataset, out, "cache=off", "epochs=2", "batch_size=32")) == 0
    assert summary(out)["cache"] is None and np.isfinite(summary(out)["final_loss"])
    out = tmp_path / "resnet"
    assert (
        main(train_args(dataset, out, "encoder=timm:resnet18", "head=chunking", "head.chunk_size=4", "epochs=1")) == 0
    )
    config = json.loads((out / "checkpoints/best/config.json").read_text())
    assert config["backbone"]["kind"] == "timm" and config["backbone"]["name"] == "resnet18"
    from policies import load_policy

    policy = load_policy(out / "checkpoints/best")
    assert policy.grid == (2, 2) and policy.backbone.embed_dim == 512


def test_observation_state_is_the_same_at_training_and_evaluation_time(dataset):
    """What the policy is trained on (the dataset's observation.state) is exactly what the
    evaluation feeds it (the environment's agent_pos through observation_features): measured
    tool pose, gripper opening and the commanded pose the actions move."""
    import envs
    from envs.dataset import observation_features
    from envs.runner import rollout
    from policies import Demonstrations

    demos = Demonstrations.load(dataset)
    assert demos.meta["state_names"][5:] == ["cmd_x", "cmd_y", "cmd_z", "cmd_yaw"]
    first = demos.meta["episodes"][0]
    env = envs.dataset_spec(dataset).make()
    episode = rollout(env, envs.make_expert(env), first["seed"])
    recorded = demos.states[demos.episode_start == 0]
    np.testing.assert_array_equal(episode.states, recorded)
    obs, _ = env.reset(seed=first["seed"])
    at_eval = observation_features(obs, list(demos.meta["cameras"]))["observation.state"]
    np.testing.assert_array_equal(at_eval, recorded[0])
    # the commanded pose leads the measured tool while the arm moves
    assert np.abs(recorded[:, 5:8] - recorded[:, :3]).max() > 0.005
    env.close()


def test_a_dataset_recorded_before_the_state_change_is_refused(dataset, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(dataset, old)
    meta = json.loads((old / "meta/pixio_env.json").read_text())
    meta["state_names"] = meta["state_names"][:5]  # what versions before the commanded pose wrote
    (old / "meta/pixio_env.json").write_text(json.dumps(meta))
    assert main(train_args(old, tmp_path / "run", "epochs=1")) == 2
    err = capsys.readouterr().err
    assert "recorded with an older observation.state" in err and "re-record it" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_bad_input_is_refused_with_nothing_changed(dataset, tmp_path, capsys):
    data_before = snapshot(dataset)

    def refused(*args: str, match: str, out: Path | None = None) -> None:
        out = out or tmp_path / "never"
        before = snapshot(out)
        assert main(train_args(dataset, out, *args)) == 2
        err = capsys.readouterr().err
        assert match in err and err.count("\n") == 1, err
        assert snapshot(out) == before and snapshot(dataset) == data_before

    refused("cameras=[wrist]", match="has no camera 'wrist' (it has: front)")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train-policy", f"dataset={empty}", "encoder=vitn16", f"out={tmp_path / 'x'}"]) == 2
    assert "is an empty folder" in capsys.readouterr().err
    no_episodes = tmp_path / "no_episodes"
    shutil.copytree(dataset / "meta", no_episodes / "meta")
    meta = json.loads((no_episodes / "meta/pixio_env.json").read_text())
    (no_episodes / "meta/pixio_env.json").write_text(json.dumps(meta | {"episodes": []}))
    assert main(["train-policy", f"dataset={no_episodes}", "encoder=vitn16", f"out={tmp_path / 'x'}"]) == 2
    assert "holds no episodes" in capsys.readouterr().err
    refused("head=nope", match="unknown head=nope: choose one of chunking, cortexbench, keypoints, spatial")
    refused("train-policy=nope", match="unknown train-policy=nope: choose one of eai_vc")
    refused("head.bogus=1", match="unknown option 'head.bogus'")
    refused("lr_schedule=linear", match="lr_schedule='linear': use constant or cosine")
    refused("consecutive=0", match="consecutive=0: use 1 (shuffled frames) or a run length like 8")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    refused("epochs=1", match="is not empty: pass resume=true", out=occupied)
    refused("encoder=timm:resnet18", "layer=3", match="timm backbones give their final features only")
    assert not (tmp_path / "never").exists() and not (tmp_path / "x").exists()


def test_lerobot_dataset_windows_match_ours_and_train_the_policy(dataset):
    """LeRobot's dataset, with this policy config's delta indices, gives the same history and
    action windows (episode-start repeats, end padding) as our sampler, and forward() trains."""
    from lerobot.datasets import resolve_delta_timestamps
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata
    from torch.utils.data import default_collate

    from policies import ChunkingConfig, Demonstrations, load_backbone
    from policies.train import EncodedImages, make_policy

    demos = Demonstrations.load(dataset)
    backbone, spec = load_backbone("vitn16")
    policy = make_policy(demos, backbone, spec, ChunkingConfig(history=2, chunk_size=6, token_grid=2)).eval()
    meta = LeRobotDatasetMetadata("local/push", root=dataset)
    ds = LeRobotDataset("local/push", root=dataset, delta_timestamps=resolve_delta_timestamps(policy.config, meta))
    first_end = int(demos.episode_end[0])
    index = torch.tensor([0, 1, first_end - 3, first_end - 1, first_end, len(demos) - 1])
    batch = default_collate([ds[int(i)] for i in index])
    history, _ = demos.windows(index, policy.config.observation_delta_indices)
    targets, pad = demos.windows(index, policy.config.action_delta_indices)
    assert torch.equal(batch["action_is_pad"], pad) and pad[3].sum() == 5 and not pad[0].any()
    assert torch.equal(batch["action"][~pad], torch.from_numpy(demos.actions)[targets][~pad])
    assert torch.equal(batch["observation.state"], torch.from_numpy(demos.states)[history])
    ours = EncodedImages([demos.decode_frames()], policy, augment=False)(history, torch.Generator())
    theirs = policy._batch_features(batch)
    assert torch.allclose(ours["patches"], theirs["patches"], atol=1e-5)
    policy.train()
    loss, info = policy.forward(batch)
    loss.backward()
    assert np.isfinite(info["loss"]) and policy.head.action_out.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in policy.backbone.parameters())


def test_lerobot_trainer_trains_a_saved_policy_that_then_evaluates(dataset, tmp_path):
    """LeRobot's own training loop (`lerobot-train`, through policies.lerobot_train) continues a
    policy saved by train-policy: the head changes, the frozen encoder does not, and the
    checkpoint it writes loads and runs in our evaluation."""
    import subprocess
    import sys

    from policies import evaluate, load_policy, train_policy

    start = train_policy(dataset=str(dataset), encoder="vitn16", epochs=1, batch_size=32, out=str(tmp_path / "run"))
    args = [
        f"--policy.path={start.last}",
        "--policy.push_to_hub=false",
        "--policy.device=cpu",
        "--dataset.repo_id=local/push",
        f"--dataset.root={dataset}",
        "--steps=3",
        "--batch_size=4",
        "--num_workers=0",
        "--save_freq=3",
        "--wandb.enable=false",
        f"--output_dir={tmp_path / 'lerobot'}",
    ]
    proc = subprocess.run([sys.executable, "-m", "policies.lerobot_train", *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    trained = tmp_path / "lerobot/checkpoints/000003/pretrained_model"
    before, after = load_policy(start.last).state_dict(), load_policy(trained).state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("head.") for k in changed)
    result = evaluate(trained, seeds=[100_000], progress=False)
    assert result["episodes"] == 1 and result["env_name"] == "push"


def test_a_policy_reads_several_cameras_joined_and_evaluates(tmp_path_factory, tmp_path):
    """front + wrist: one cache per camera, patch grids side by side, global embeddings
    concatenated; the saved policy acts in the environment through eval-policy."""
    from policies import Demonstrations, load_policy, train_policy
    from policies.modeling_pixio import join_views

    data = tmp_path_factory.getbasetemp() / "policies_data" / "push_two_cameras"
    collect = ["collect", "env=push", "cameras=[front,wrist]", f"image_size={IMAGE_SIZE}", "episodes=2"]
    assert main([*collect, f"out={data}", "progress=false"]) == 0
    kwargs = {"epochs": 1, "batch_size": 32, "out": str(tmp_path / "run"), "progress": False}
    result = train_policy(dataset=str(data), encoder="vitn16", head="keypoints", cameras=["front", "wrist"], **kwargs)
    assert [Path(c.path).name.split("-")[-2] for c in result.caches] == ["front", "wrist"]
    policy = load_policy(result.best)
    assert policy.config.cameras == ["front", "wrist"] and policy.grid == (4, 8)

    demos = Demonstrations.load(data, ["front", "wrist"])
    frames = {f"observation.images.{c}": demos.decode_frames(c)[:3] for c in demos.cameras}  # (3, H, W, 3) uint8
    joined = policy.encode_views(frames)["patches"]
    front, wrist = (policy.encode(v)["patches"] for v in frames.values())
    assert (
        joined.shape == (3, 4, 8, 128) and torch.equal(joined[:, :, :4], front) and torch.equal(joined[:, :, 4:], wrist)
    )
    assert torch.equal(
        join_views([{"global": front[:, 0, 0]}, {"global": wrist[:, 0, 0]}])["global"][:, 128:], wrist[:, 0, 0]
    )

    out = tmp_path / "eval"
    assert main(["eval-policy", f"policy={result.best}", "episodes=1", f"out={out}", "progress=false", "videos=0"]) == 0
    assert json.loads((out / "result.json").read_text())["episodes"] == 1
    with pytest.raises(PixioError, match="name one or more different cameras"):
        Demonstrations.load(data, ["front", "front"])


def test_the_oracle_reads_the_object_state_and_is_refused_without_it(dataset, push_with_state, tmp_path, capsys):
    """encoder=oracle: the recorded environment state is each frame's embedding, through the same
    head, normalisation and evaluation code; no camera, no feature cache."""
    from policies import Demonstrations, load_policy, train_policy

    data = push_with_state
    kwargs = {"epochs": 2, "batch_size": 32, "out": str(tmp_path / "run"), "progress": False}
    result = train_policy(dataset=str(data), encoder="oracle", **kwargs)
    assert result.caches == [] and not (data / "features").exists()
    policy = load_policy(result.best)
    assert policy.config.cameras == [] and policy.backbone.embed_dim == 9  # cube pose (7) and goal (2)
    demos = Demonstrations.load(data)
    states = torch.from_numpy(demos.env_states[:4])
    assert torch.equal(policy.encode_views({"observation.environment_state": states})["global"], states)
    out = tmp_path / "eval"
    assert main(["eval-policy", f"policy={result.best}", "episodes=1", f"out={out}", "progress=false", "videos=0"]) == 0

    before = snapshot(dataset)

    def oracle_args(data: Path, out: Path) -> list[str]:
        return [a if not a.startswith("encoder=") else "encoder=oracle" for a in train_args(data, out)]

    assert main(oracle_args(dataset, tmp_path / "no_state")) == 2
    assert "record it with pixio-robot collect environment_state=true" in capsys.readouterr().err
    assert main([*oracle_args(data, tmp_path / "kp"), "head=keypoints"]) == 2
    assert "no patch grid: head=keypoints needs one" in capsys.readouterr().err
    assert snapshot(dataset) == before and not (tmp_path / "no_state").exists() and not (tmp_path / "kp").exists()


def test_aux_state_learns_where_the_objects_are_and_needs_the_recorded_positions(
    dataset, push_with_state, tmp_path, capsys
):
    """head.aux_state: the last hidden layer also predicts the recorded object positions in training;
    the saved policy acts without it, and a dataset without the state is refused in one line."""
    from policies import Demonstrations, load_policy, train_policy

    kwargs = {"encoder": "vitn16", "head": {"name": "keypoints", "aux_state": 1.0}, "batch_size": 32}
    result = train_policy(dataset=str(push_with_state), epochs=40, out=str(tmp_path / "run"), progress=False, **kwargs)
    policy = load_policy(result.best)
    assert policy.config.aux_state_index == [0, 1, 2, 7, 8]  # cube x, y, z and goal x, y (not the quaternion)
    assert policy.head.aux.out_features == 5
    demos = Demonstrations.load(push_with_state)
    index = torch.arange(len(demos))
    history, _ = demos.windows(index, policy.config.observation_delta_indices)
    frames = torch.from_numpy(demos.decode_frames())[history].permute(0, 1, 4, 2, 3)  # (N, T, 3, H, W)
    batch = {"observation.images.front": frames, "observation.state": torch.from_numpy(demos.states)}
    policy.eval()
    with torch.no_grad():
        features = policy._batch_features(batch)
        _, aux = policy.head(features, policy.normalize_state(batch["observation.state"]), aux=True)
    truth = (torch.from_numpy(demos.env_states)[:, [0, 1, 2, 7, 8]] - policy.aux_mean) / policy.aux_std
    varying = policy.aux_std > 1e-3  # the cube's height barely moves in push
    error = (aux - truth)[:, varying].square().mean()
    assert error < 0.5 * truth[:, varying].var(0).mean()  # well below predicting the mean
    out = tmp_path / "eval"  # acting needs no object state
    assert main(["eval-policy", f"policy={result.best}", "episodes=1", f"out={out}", "progress=false", "videos=0"]) == 0

    before = snapshot(dataset)
    args = [*train_args(dataset, tmp_path / "no_state"), "head=keypoints", "head.aux_state=1"]
    assert main(args) == 2
    assert "re-record it with pixio-robot collect environment_state=true" in capsys.readouterr().err
    assert main([*train_args(push_with_state, tmp_path / "neg"), "head.aux_state=-1"]) == 2
    assert "head.aux_state=-1.0: give a loss weight >= 0" in capsys.readouterr().err
    assert snapshot(dataset) == before and not (tmp_path / "no_state").exists() and not (tmp_path / "neg").exists()
