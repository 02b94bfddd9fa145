"""Environment throughput: the toolkit's env against a bare MuJoCo loop, and parallel collection.

1. Steps/s of `pick_place` with one 128x128 camera and with none, against a bare loop on the
   same compiled scene (`mj_step` x the same substeps + `Renderer.update_scene` + `render`
   with the same renderer settings). The two loops run alternately in short blocks in one
   process; rates are medians over blocks, the overhead (bare rate / env rate - 1, goal
   <= 15%) the median over neighbouring block pairs.
2. Episodes/s of parallel expert rollouts with images (`envs.run_episodes`, what `collect` and
   evaluation use) for 1 and 2 workers (goal: 2 workers >= 1.7x one), with and without the
   worker start-up; 1 and 2 workers alternate for --rounds rounds and the medians are
   reported (one episode takes ~0.2 s: a short run is mostly noise). Optionally (--dataset)
   the whole `collect` command, video encoding included.

    uv run python benchmarks/envs.py [--steps 50] [--reps 21] [--episodes 48] [--rounds 3] [--dataset]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

# This file is called envs.py, like the package it measures: keep its folder off the import path.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco is imported

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

import envs  # noqa: E402
from envs.runner import run_episodes  # noqa: E402


def env_loop(env, steps: int) -> float:
    action = np.zeros(5, np.float32)
    t = time.perf_counter()
    for _ in range(steps):
        env.step(action)
    return steps / (time.perf_counter() - t)


def bare_loop(model, data, renderer, camera: int, substeps: int, steps: int) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        mujoco.mj_step(model, data, nstep=substeps)
        if renderer is not None:
            renderer.update_scene(data, camera)
            renderer.render()
    return steps / (time.perf_counter() - t)


def step_rates(cameras, steps: int, reps: int) -> tuple[float, float, float]:
    """(env steps/s, bare steps/s, median of the per-pair overheads). The two loops alternate
    in short blocks; each pair ran seconds apart, so the ratio of a pair is little affected by
    other load on the machine even when the rates themselves are."""
    env = envs.make_env("pick_place", cameras=cameras, image_size=128, time_limit=100_000)
    env.reset(seed=0)
    base = env.unwrapped
    model = base.model  # the same compiled scene, with the renderer settings the env applied
    data = base.data.__copy__()  # same state and controls: same physics work per step
    renderer = camera = None
    if cameras:
        renderer = mujoco.Renderer(model, 128, 128)
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        camera = model.camera(cameras[0]).id
    env_loop(env, 20), bare_loop(model, data, renderer, camera, base.substeps, 20)  # warm-up
    ours, bare = [], []
    for _ in range(reps):
        ours.append(env_loop(env, steps))
        bare.append(bare_loop(model, data, renderer, camera, base.substeps, steps))
    if renderer is not None:
        renderer.close()
    env.close()
    overhead = statistics.median(b / o - 1 for o, b in zip(ours, bare, strict=True))
    return statistics.median(ours), statistics.median(bare), overhead


def episode_rates(workers: int, episodes: int) -> tuple[float, float]:
    """(episodes/s including worker start-up, episodes/s once the first episode is in)."""
    spec = envs.EnvSpec.parse("pick_place", cameras=["front"], image_size=128)
    t0 = time.perf_counter()
    first = None
    n = 0
    for _ in run_episodes(spec, range(episodes), workers=workers, record=True):
        n += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    return n / (end - t0), (n - 1) / (end - first)


def collect_rate(workers: int, episodes: int) -> float:
    from pixio_robot.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        args = ["collect", "env=pick_place", "cameras=[front]", f"episodes={episodes}", f"workers={workers}"]
        assert main([*args, f"out={tmp}/ds", "progress=false"]) == 0
        return episodes / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=50, help="steps per timed block (x4 without camera)")
    ap.add_argument("--reps", type=int, default=21, help="timed blocks per loop")
    ap.add_argument("--episodes", type=int, default=48, help="episodes per parallel-rollout run")
    ap.add_argument("--rounds", type=int, default=3, help="runs per worker count (alternating; medians)")
    ap.add_argument("--dataset", action="store_true", help="also time the full collect command")
    args = ap.parse_args()
    load0 = os.getloadavg()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, MuJoCo {mujoco.__version__}")
    print(f"load average before: {load0[0]:.2f}\n")

    print("| loop (pick_place, 25 physics steps per env step) | steps/s | vs bare loop |")
    print("|---|---|---|")
    for cameras, label, steps in (
        (None, "no camera", 4 * args.steps),
        (["front"], "one 128x128 RGB camera", args.steps),
    ):
        ours, bare, overhead = step_rates(cameras, steps, args.reps)
        print(f"| bare mujoco, {label} | {bare:.0f} | 1.00x |")
        print(f"| envs (gymnasium.make), {label} | {ours:.0f} | {ours / bare:.2f}x (overhead {overhead:+.1%}) |")

    print("\n| parallel rollouts (pick_place expert, 128x128 front camera, images kept) | episodes/s | vs 1 worker |")
    print("|---|---|---|")
    runs: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
    for _ in range(args.rounds):
        for w in runs:
            runs[w].append(episode_rates(w, args.episodes))
    rates = {w: tuple(statistics.median(r[i] for r in rs) for i in (0, 1)) for w, rs in runs.items()}
    for w, (total, steady) in rates.items():
        print(f"| {w} worker(s), {args.episodes} episodes, with start-up | {total:.2f} | {total / rates[1][0]:.2f}x |")
        print(f"| {w} worker(s), after the first episode | {steady:.2f} | {steady / rates[1][1]:.2f}x |")
    if args.dataset:
        c1, c2 = collect_rate(1, args.episodes), collect_rate(2, args.episodes)
        print(f"| collect command (LeRobot dataset, lossless H.264 video), 1 worker | {c1:.2f} | 1.00x |")
        print(f"| collect command (LeRobot dataset, lossless H.264 video), 2 workers | {c2:.2f} | {c2 / c1:.2f}x |")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
