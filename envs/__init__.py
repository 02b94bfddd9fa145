"""Simulated manipulation: own MuJoCo tasks, MetaWorld, scripted experts, demonstrations, captures.

    import envs
    env = envs.make_env("pick_place", cameras=["front", "wrist"], image_size=96)
    # or: gymnasium.make("pixio_robot/PickPlace-v0", cameras=["front"]) once `envs` is imported
    expert = envs.make_expert(env, noise=0.1)
    obs, info = env.reset(seed=0); expert.reset(0)
    obs, reward, terminated, truncated, info = env.step(expert(obs))

Episodes in parallel: `envs.run_episodes(spec, seeds, workers=2)`; demonstrations:
`pixio-robot collect env=pick_place episodes=50 out=data/pick_place`; multi-view RGB-D:
`pixio-robot capture env=stack scenes=10 views=8 out=captures/`.
"""

import importlib

import pixio_robot  # noqa: F401  (sets MUJOCO_GL=egl before anything imports mujoco)

from .registry import ENV_IDS, METAWORLD_ID, OWN_TASKS, EnvSpec, make_env, register

register()

# Heavier parts load on first use, so `import envs` stays cheap in worker processes and the CLI.
_LAZY = {
    "make_expert": "experts",
    "Policy": "experts",
    "Episode": "runner",
    "rollout": "runner",
    "run_episodes": "runner",
    "expert_policy": "runner",
    "CameraInfo": "cameras",
    "backproject": "cameras",
    "project": "cameras",
    "CORTEXBENCH_TASKS": "metaworld_env",
    "load_dataset": "dataset",
    "dataset_spec": "dataset",
    "read_env_metadata": "dataset",
    "observation_features": "dataset",
    "load_scene": "capture",
    "scene_folders": "capture",
}
__all__ = ["ENV_IDS", "METAWORLD_ID", "OWN_TASKS", "EnvSpec", "make_env", "register", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'envs' has no attribute {name!r}")
