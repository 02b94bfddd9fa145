"""The own tasks: gymnasium compliance, experts, determinism, cameras and bad input."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.cameras import backproject
from envs.experts import make_expert
from envs.runner import rollout
from pixio_robot.errors import PixioError

OWN = list(envs.OWN_TASKS)


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_check_env_passes_on_every_registered_environment(env_id):
    kwargs = {"task": "button-press-topdown"} if env_id == envs.METAWORLD_ID else {}
    env = gym.make(env_id, image_size=32, render_mode="rgb_array", **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    checker = [str(w.message) for w in caught if "gymnasium" in w.filename]
    assert not checker, checker  # the checker's warnings (bounds, dtypes, seeding) count as failures
    env.close()


@pytest.mark.parametrize("task", OWN)
def test_expert_succeeds_on_20_seeds(task):
    env = envs.make_env(task, cameras=None)  # no rendering: the physics and the expert are what count
    expert = make_expert(env)
    results = [rollout(env, expert, seed, record=False) for seed in range(20)]
    env.close()
    rate = np.mean([ep.success for ep in results])
    assert rate >= 0.98, f"{task}: expert succeeded on {rate:.0%} of seeds"
    assert all(ep.successes[-1] == ep.success and ep.length == len(ep.actions) for ep in results)


@pytest.mark.slow
@pytest.mark.parametrize("task", OWN)
def test_expert_succeeds_on_200_seeds_and_100_noisy_ones(task):
    env = envs.make_env(task, cameras=None)
    clean, noisy = make_expert(env), make_expert(env, noise=0.3)
    assert all(rollout(env, clean, seed, record=False).success for seed in range(200))
    assert np.mean([rollout(env, noisy, seed, record=False).success for seed in range(100)]) >= 0.98
    env.close()


def test_expert_with_action_noise_still_succeeds():
    env = envs.make_env("pick_place", cameras=None)
    noisy = make_expert(env, noise=0.3)
    episodes = [rollout(env, noisy, seed, record=False) for seed in range(6)]
    clean = rollout(env, make_expert(env), 0, record=False)
    env.close()
    assert all(ep.success for ep in episodes)
    assert not np.allclose(episodes[0].actions[: clean.length], clean.actions[: episodes[0].length])


def test_noisy_expert_records_its_own_action_not_the_executed_one():
    """DART: the executed action is perturbed, the demonstrated one is the expert's."""
    env = envs.make_env("reach", cameras=None)
    noisy, clean = make_expert(env, noise=0.5), make_expert(env)
    obs, _ = env.reset(seed=0)
    noisy.reset(0)
    executed, labels, expert = [], [], []
    for _ in range(5):
        expert.append(clean(obs))  # the reach expert's plan depends on the state only
        executed.append(noisy(obs))
        labels.append(noisy.label)
        obs, *_ = env.step(executed[-1])
    np.testing.assert_allclose(labels, expert)
    assert not np.allclose(executed, labels)
    episode = rollout(env, noisy, seed=0, record=False)
    env.close()
    np.testing.assert_allclose(episode.actions[:5], labels)  # same seed, same noise: same run


def test_mistaken_descents_are_executed_beside_the_cube_and_recovered_from():
    """collect mistakes=1: the pick_place expert starts down 2.5-5 cm beside the cube, records the
    way back (rise, approach again) instead, and still succeeds."""
    env = envs.make_env("pick_place", image_size=32)
    offsets, differed = [], 0
    for seed in range(6):
        expert = make_expert(env, noise=0.3, mistakes=1.0)
        obs, _ = env.reset(seed=seed)
        expert.reset(seed)
        task, offset, success = env.unwrapped, None, False
        for _ in range(task.max_episode_steps):
            action = expert(obs)
            differed += not np.allclose(action, expert.label, atol=0.35)  # far beyond the motion noise
            if offset is None and task.tcp[2] < 0.06:
                offset = float(np.linalg.norm(task.tcp[:2] - task.cube_pos()[:2]))
            obs, _, terminated, truncated, info = env.step(action)
            success = bool(info["is_success"])
            if terminated or truncated:
                break
        assert success, seed
        offsets.append(offset)
    env.close()
    assert max(offsets) > 0.025 and differed > 0  # descents where the cube is not, not demonstrated
    with pytest.raises(PixioError, match="only the grasping tasks"):
        make_expert(envs.make_env("push", cameras=None), mistakes=0.5)
    with pytest.raises(PixioError, match="between 0 and 1"):
        make_expert(envs.make_env("pick_place", cameras=None), mistakes=1.5)


def test_same_seed_same_first_observation_and_trajectory():
    def run(seed):
        env = envs.make_env("stack", cameras=["front", "wrist"], image_size=48, environment_state=True)
        ep = rollout(env, make_expert(env, noise=0.1), seed, record=True)
        env.close()
        return ep

    a, b, c = run(5), run(5), run(6)
    assert a.length == b.length
    for name in ("front", "wrist"):
        assert np.array_equal(a.images[name], b.images[name])
    assert np.array_equal(a.states, b.states) and np.array_equal(a.actions, b.actions)
    assert np.array_equal(a.env_states, b.env_states)
    assert not np.array_equal(a.images["front"][0], c.images["front"][0])
    assert not np.allclose(a.env_states[0], c.env_states[0])


def test_episode_ends_on_success_and_at_the_time_limit():
    env = envs.make_env("reach", cameras=None, time_limit=3)
    obs, info = env.reset(seed=0)
    assert info["is_success"] is False
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step(np.zeros(5, np.float32))
        assert "is_success" in info
    assert truncated and not terminated
    with pytest.raises(PixioError, match="call reset"):
        env.step(np.zeros(5, np.float32))
    env.close()
    env = envs.make_env("reach", cameras=None)
    ep = rollout(env, make_expert(env), 0, record=False)
    assert ep.success and ep.length < env.unwrapped.max_episode_steps and ep.rewards[-1] == 1.0
    env.close()


@pytest.mark.parametrize("hold", [0, 5])
def test_episode_goes_on_while_success_holds_then_ends(hold):
    """Demonstrations show staying at the goal: the episode ends `success_hold` steps after the
    first success (while success lasts), so the last hold + 1 frames are all successes."""
    env = envs.make_env("reach", cameras=None, success_hold=hold)
    ep = rollout(env, make_expert(env), 0, record=False)
    first = int(np.argmax(ep.successes))
    assert ep.success and ep.length == first + hold + 1 and ep.successes[first:].all()
    assert not ep.successes[:first].any()
    # the expert settles at the goal during the hold: the tool ends no farther from it
    goal = env.unwrapped.goal
    assert np.linalg.norm(ep.final_state[:3] - goal) <= np.linalg.norm(ep.states[first, :3] - goal) + 1e-3
    env.close()
    with pytest.raises(PixioError, match="success_hold=-1"):
        envs.make_env("reach", cameras=None, success_hold=-1)


def test_randomisation_options_change_the_look_not_the_layout():
    def first(**options):
        env = envs.make_env("push", cameras=["front"], image_size=48, environment_state=True, **options)
        obs, _ = env.reset(seed=3)
        cam = env.unwrapped.camera_info("front").cam2world
        env.close()
        return obs, cam

    plain, cam = first()
    lit, cam_lit = first(random_lighting=True)
    moved, cam_moved = first(camera_jitter=0.03)
    for obs in (lit, moved):
        assert np.array_equal(obs["environment_state"], plain["environment_state"])
        assert np.abs(obs["pixels"].astype(int) - plain["pixels"]).mean() > 1
    assert np.allclose(cam, cam_lit)
    assert 0.001 < np.linalg.norm(cam_moved[:3, 3] - cam[:3, 3]) <= 0.03 + 1e-9


def test_depth_from_two_cameras_gives_the_same_points_on_the_cube():
    env = envs.make_env(
        "pick_place", cameras={"front": (120, 160), "side": 128}, depth=True, segmentation=True, environment_state=True
    )
    obs, _ = env.reset(seed=2)
    base = env.unwrapped
    cube_body = base.model.body("cube").id
    center, half = base.cube_pos(), base.cube_half()
    R = base.data.xmat[cube_body].reshape(3, 3)
    clouds = {}
    for name in ("front", "side"):
        info = base.camera_info(name)
        assert obs["depth"][name].shape == (info.height, info.width)
        points = backproject(obs["depth"][name], info.K, info.cam2world)
        mask = obs["segmentation"][name] == cube_body
        assert mask.sum() > 20
        clouds[name] = points[mask]
        # every cube pixel lies on the cube's surface (exact geometry, not sampling)
        local = np.abs((clouds[name] - center) @ R) - half
        surface = np.abs(np.linalg.norm(np.maximum(local, 0), axis=1) + np.minimum(local.max(1), 0))
        assert np.percentile(surface, 95) < 0.002
        # the table top is the plane z = 0
        table = points[obs["segmentation"][name] == base.model.body("table").id]
        assert np.abs(table[:, 2]).max() < 0.002
    # the two cameras see the same surface: nearest neighbours a few millimetres apart at most
    a, b = clouds["front"], clouds["side"]
    nn = np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)).min(1)
    top = a[:, 2] > center[2] + half - 0.002  # the top face, seen by both
    assert np.median(nn[top]) < 0.004
    env.close()


def test_wrist_camera_moves_with_the_hand():
    env = envs.make_env("reach", cameras=["wrist"], image_size=32)
    env.reset(seed=0)
    before = env.unwrapped.camera_info("wrist").cam2world
    for _ in range(5):
        env.step(np.array([1, 0, -1, 0, 0], np.float32))
    after = env.unwrapped.camera_info("wrist").cam2world
    env.close()
    assert np.linalg.norm(after[:3, 3] - before[:3, 3]) > 0.05
    assert np.allclose(after[:3, :3] @ after[:3, :3].T, np.eye(3), atol=1e-9)


@pytest.mark.parametrize("task", ["reach", "push", "pick_place", "stack"])
def test_benchmark_difficulty_keeps_objects_within_a_10cm_area(task):
    """benchmark: positions over ~10 cm as in MetaWorld; hard: the whole table."""
    spread = {}
    for level in ("benchmark", "hard"):
        env = envs.make_env(task, cameras=None, environment_state=True, difficulty=level)
        first = np.stack([env.reset(seed=s)[0]["environment_state"][:2] for s in range(60)])  # object x, y
        env.close()
        spread[level] = first.max(0) - first.min(0)
    assert np.all(spread["benchmark"] <= 0.151) and np.all(spread["benchmark"] > 0.06)
    assert np.all(spread["hard"] > 1.5 * spread["benchmark"])


def test_unknown_difficulty_is_refused_in_one_line(tmp_path, capsys):
    from pixio_robot.cli import main

    with pytest.raises(PixioError, match="difficulty='easy': choose benchmark or hard"):
        envs.make_env("push", difficulty="easy")
    out = tmp_path / "d"
    assert main(["collect", "env=push", "difficulty=easy", "episodes=1", f"out={out}"]) == 2
    err = capsys.readouterr().err
    assert "difficulty='easy': choose benchmark or hard" in err and err.count("\n") == 1, err
    assert not out.exists()


def test_unknown_names_and_out_of_range_sizes_are_refused():
    with pytest.raises(PixioError, match="unknown environment 'pik_place'"):
        envs.make_env("pik_place")
    with pytest.raises(gym.error.NameNotFound):
        gym.make("pixio_robot/PickPlac-v0")
    with pytest.raises(PixioError, match="unknown camera 'fornt'.*front"):
        envs.make_env("pick_place", cameras=["fornt"])
    for size in (8, 4096, (64, 3000)):
        with pytest.raises(PixioError, match="out of range"):
            envs.make_env("pick_place", image_size=size)
    with pytest.raises(PixioError, match="unknown option 'colour'"):
        envs.make_env("push", colour=True)
    with pytest.raises(PixioError, match="control_hz"):
        envs.make_env("push", control_hz=7)


def test_bad_actions_raise_and_leave_the_episode_untouched():
    env = envs.make_env("pick_place", cameras=["front"], image_size=32)
    twin = envs.make_env("pick_place", cameras=["front"], image_size=32)
    env.reset(seed=1)
    twin.reset(seed=1)
    base = env.unwrapped
    qpos, target = base.data.qpos.copy(), base.target_pose
    for bad, message in [
        (np.zeros(4), "shape"),
        (np.zeros((1, 5)), "shape"),
        (np.array([0, 0, np.nan, 0, 0]), "not finite"),
        (np.array([0, np.inf, 0, 0, 0]), "not finite"),
        ("left", "numeric"),
    ]:
        with pytest.raises(PixioError, match=message):
            env.step(bad)
    assert np.array_equal(base.data.qpos, qpos) and np.array_equal(base.target_pose, target) and base.steps == 0
    action = np.array([0.5, -0.2, -0.3, 0.1, 1.0], np.float32)
    a, *_ = env.step(action)
    b, *_ = twin.step(action)
    assert np.array_equal(a["agent_pos"], b["agent_pos"]) and np.array_equal(a["pixels"], b["pixels"])
    # out-of-range values are clipped, as documented
    c, *_ = env.step(action * 10)
    d, *_ = twin.step(np.clip(action * 10, -1, 1))
    assert np.array_equal(c["agent_pos"], d["agent_pos"])
    env.close()
    twin.close()


def test_env_spec_round_trip_and_compatibility():
    spec = envs.EnvSpec.parse("PickPlace", cameras=["front", "wrist"], image_size=96)
    assert spec.id == "pixio_robot/PickPlace-v0" and spec.name == "pick_place"
    assert envs.EnvSpec.from_dict(spec.to_dict()) == spec
    spec.check_compatible(spec.replace(random_lighting=True))  # the look may change, the interface not
    with pytest.raises(PixioError, match="cameras"):
        spec.check_compatible(spec.replace(cameras=["front"]))
    with pytest.raises(PixioError, match="image_size|cameras"):
        spec.check_compatible(spec.replace(image_size=64))
    with pytest.raises(PixioError, match="id"):
        spec.check_compatible(envs.EnvSpec.parse("stack", cameras=["front", "wrist"], image_size=96))
    mw = envs.EnvSpec.parse("metaworld/hammer")
    assert mw.kwargs["task"] == "hammer" and mw.name == "metaworld/hammer"
