"""The MetaWorld v3 adapter: conventions, cameras, seeding, and MetaWorld's own experts."""

from __future__ import annotations

import numpy as np
import pytest

import envs
from envs.cameras import backproject
from envs.experts import make_expert
from envs.metaworld_env import CORTEXBENCH_TASKS, MetaWorldExpert
from envs.runner import rollout
from pixio_robot.errors import PixioError


def test_observations_follow_lerobot_conventions_with_the_chosen_cameras():
    env = envs.make_env("metaworld/assembly", cameras={"corner2": (48, 64), "topview": 32}, environment_state=True)
    obs, info = env.reset(seed=0)
    assert set(obs) == {"agent_pos", "environment_state", "pixels"}
    assert obs["pixels"]["corner2"].shape == (48, 64, 3) and obs["pixels"]["topview"].shape == (32, 32, 3)
    assert obs["pixels"]["corner2"].dtype == np.uint8 and obs["agent_pos"].shape == (4,)
    assert info == {"is_success": False}
    obs, reward, terminated, truncated, info = env.step(np.zeros(4, np.float32))
    assert isinstance(info["is_success"], bool) and env.observation_space.contains(obs)
    with pytest.raises(PixioError, match="shape"):
        env.step(np.zeros(5))
    env.close()


def test_same_seed_same_scene_and_other_seed_another():
    env = envs.make_env("metaworld/bin-picking", cameras=["corner2"], image_size=32, environment_state=True)
    a, _ = env.reset(seed=4)
    b, _ = env.reset(seed=4)
    c, _ = env.reset(seed=5)
    env.close()
    assert np.array_equal(a["pixels"], b["pixels"]) and np.array_equal(a["environment_state"], b["environment_state"])
    assert not np.allclose(a["environment_state"], c["environment_state"])


@pytest.mark.parametrize("task", ["assembly", "button-press-topdown"])
def test_metaworld_expert_succeeds(task):
    env = envs.make_env(f"metaworld/{task}", cameras=None)
    expert = make_expert(env)
    assert isinstance(expert, MetaWorldExpert)
    episode = rollout(env, expert, seed=0, record=False)
    env.close()
    assert episode.success and episode.length < 500


@pytest.mark.slow
@pytest.mark.parametrize("task", CORTEXBENCH_TASKS)
def test_metaworld_experts_succeed_on_the_cortexbench_tasks(task):
    env = envs.make_env(f"metaworld/{task}", cameras=None)
    expert = make_expert(env)
    rate = np.mean([rollout(env, expert, seed, record=False).success for seed in range(10)])
    env.close()
    assert rate >= 0.9


def test_corner_cameras_are_upright_and_their_depth_lands_on_the_table():
    env = envs.make_env("metaworld/drawer-open", cameras=["corner2"], image_size=64, depth=True)
    obs, _ = env.reset(seed=0)
    info = env.unwrapped.camera_info("corner2")
    env.close()
    points = backproject(obs["depth"], info.K, info.cam2world)
    # upright image: the bottom rows see the table (low), the top rows higher things or nothing
    z, valid = points[..., 2], obs["depth"] > 0
    h = len(z) // 3
    assert valid[-h:].all()
    top = z[:h][valid[:h]]
    assert top.size == 0 or top.mean() > z[-h:].mean()
    assert info.cam2world[2, 3] > 0.5  # the camera looks down from above the table


def test_cortexbench_camera_looks_at_the_table_and_success_can_be_read_at_the_horizon():
    """top_cap2 (R3M's fork, CortexBench's view) is added to the model: from (0, 0.9, 0.6) it
    looks at the table centre, whose depth it sees; with success_hold the episode runs on after
    success and the expert, which holds the drawer open, still succeeds at its last step."""
    env = envs.make_env("metaworld/drawer-open", cameras=["top_cap2"], image_size=64, depth=True, success_hold=500)
    obs, _ = env.reset(seed=0)
    info = env.unwrapped.camera_info("top_cap2")
    np.testing.assert_allclose(info.cam2world[:3, 3], [0.0, 0.9, 0.6], atol=1e-6)
    axis = info.cam2world[:3, 2]  # OpenCV: +z looks forward
    table = env.unwrapped.data.body("tablelink").xpos
    np.testing.assert_allclose(axis, (table - [0.0, 0.9, 0.6]) / np.linalg.norm(table - [0.0, 0.9, 0.6]), atol=1e-6)
    assert (obs["depth"] > 0).mean() > 0.9
    episode = rollout(env, make_expert(env), seed=0, record=False)
    env.close()
    assert episode.length == 500 and episode.success and episode.successes.argmax() < 200


def test_unknown_task_and_camera_are_refused():
    with pytest.raises(PixioError, match="unknown MetaWorld task 'hamer'"):
        envs.make_env("metaworld/hamer")
    with pytest.raises(PixioError, match="unknown camera 'front'.*corner2"):
        envs.make_env("metaworld/hammer", cameras=["front"])
    with pytest.raises(PixioError, match="unknown option 'random_lighting'"):
        envs.make_env("metaworld/hammer", random_lighting=True)
