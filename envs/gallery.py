"""The task pictures of the README: each own task at reset and at success, front and wrist
views, and the five CortexBench MetaWorld tasks.

    uv run python -m envs.gallery docs/envs_tasks.png
"""

from __future__ import annotations

import sys

import numpy as np

from pixio_robot.images import image_grid, save_png

from .experts import make_expert
from .metaworld_env import CORTEXBENCH_TASKS
from .registry import OWN_TASKS, make_env


def own_task_rows(size: int = 160, seed: int = 3) -> list[list[np.ndarray]]:
    rows = []
    for task in OWN_TASKS:
        env = make_env(task, cameras=["corner", "wrist"], image_size=size)
        expert = make_expert(env)
        obs, _ = env.reset(seed=seed)
        expert.reset(seed)
        start = obs["pixels"]
        done = False
        while not done:
            obs, _, terminated, truncated, _ = env.step(expert(obs))
            done = terminated or truncated
        rows.append([start["corner"], start["wrist"], obs["pixels"]["corner"], obs["pixels"]["wrist"]])
        env.close()
    return rows


def metaworld_row(size: int = 160, seed: int = 0) -> list[np.ndarray]:
    images = []
    for task in CORTEXBENCH_TASKS:
        env = make_env(f"metaworld/{task}", cameras=["corner2"], image_size=size)
        obs, _ = env.reset(seed=seed)
        images.append(obs["pixels"])
        env.close()
    return images


def main(path: str = "docs/envs_tasks.png") -> None:
    rows = own_task_rows()
    labels = ["reset (corner)", "reset (wrist)", "success (corner)", "success (wrist)"]
    save_png(path, image_grid(rows, labels=labels))
    mw = path.replace(".png", "_metaworld.png")
    save_png(mw, image_grid([metaworld_row()], labels=list(CORTEXBENCH_TASKS)))
    print(f"{path}: rows {', '.join(OWN_TASKS)}; {mw}")


if __name__ == "__main__":
    main(*sys.argv[1:])
