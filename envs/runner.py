"""Episodes, one at a time (`rollout`) or many in parallel worker processes (`run_episodes`).

Both recording and evaluation use this: a policy factory `make_policy(env) -> Policy` builds
the policy inside each worker (it must be picklable: a module-level function or a
`functools.partial`), and every episode is reset with its own seed, so results do not depend
on which worker ran it. `run_episodes` yields episodes in the order of the seeds given.

    for ep in run_episodes(EnvSpec.parse("stack"), seeds=range(20), workers=2):
        print(ep.seed, ep.success, ep.length)
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import queue
import signal
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

from pixio_robot.errors import PixioError

from .experts import Policy, make_expert
from .registry import EnvSpec

PolicyFactory = Callable[[gym.Env], Policy]


def expert_policy(noise: float = 0.0, mistakes: float = 0.0) -> PolicyFactory:
    """The factory of the environment's scripted expert (picklable)."""
    return functools.partial(make_expert, noise=noise, mistakes=mistakes)


@dataclass
class Episode:
    """One episode. Step t holds the observation before action t; `images` and `depth` are
    there when recorded. `success` is true when the episode ended in success."""

    seed: int
    success: bool
    length: int
    states: np.ndarray  # (T, S) float32 agent_pos
    actions: np.ndarray  # (T, A) float32
    rewards: np.ndarray  # (T,) float32 reward after each action
    successes: np.ndarray  # (T,) bool is_success after each action
    env_states: np.ndarray | None = None  # (T, E) float32 when the env observes it
    images: dict[str, np.ndarray] = field(default_factory=dict)  # camera -> (T, H, W, 3) uint8
    final_state: np.ndarray | None = None  # agent_pos after the last action

    @property
    def done(self) -> np.ndarray:
        d = np.zeros(self.length, bool)
        d[-1:] = True
        return d


def rollout(env: gym.Env, policy: Policy, seed: int, record: bool = True, max_steps: int | None = None) -> Episode:
    """Run one episode of `policy` from `env.reset(seed=seed)`."""
    obs, info = env.reset(seed=seed)
    policy.reset(seed)
    states, actions, rewards, successes, env_states = [], [], [], [], []
    images: dict[str, list] = {}
    cameras = list(getattr(env.unwrapped, "cameras", {}) or {})
    limit = max_steps or env.unwrapped.max_episode_steps
    done = False
    while not done and len(actions) < limit:
        action = np.asarray(policy(obs), np.float32)
        states.append(obs["agent_pos"])
        if "environment_state" in obs:
            env_states.append(obs["environment_state"])
        if record and "pixels" in obs:
            pixels = obs["pixels"] if isinstance(obs["pixels"], dict) else {cameras[0]: obs["pixels"]}
            for name, image in pixels.items():
                images.setdefault(name, []).append(image)
        obs, reward, terminated, truncated, info = env.step(action)
        # DART: a noisy expert executes a perturbed action but demonstrates its own (`label`), so
        # the data shows how to come back from where the noise led, not the noise itself.
        actions.append(np.asarray(getattr(policy, "label", action), np.float32))
        rewards.append(reward)
        successes.append(bool(info["is_success"]))
        done = terminated or truncated
    return Episode(
        seed=int(seed),
        success=bool(successes and successes[-1]),
        length=len(actions),
        states=np.asarray(states, np.float32),
        actions=np.asarray(actions, np.float32),
        rewards=np.asarray(rewards, np.float32),
        successes=np.asarray(successes, bool),
        env_states=np.asarray(env_states, np.float32) if env_states else None,
        images={k: np.stack(v) for k, v in images.items()},
        final_state=np.asarray(obs["agent_pos"], np.float32),
    )


def run_episodes(
    spec: EnvSpec,
    seeds: Iterable[int],
    make_policy: PolicyFactory | None = None,
    workers: int = 1,
    record: bool = True,
) -> Iterator[Episode]:
    """Episodes for `seeds`, in that order. `workers=1` runs in this process; more run in
    worker processes (spawned: each makes its own environment and renderer). The seeds are
    consumed lazily, so an endless iterator is fine: stop iterating when you have enough."""
    make_policy = make_policy or expert_policy()
    if workers < 1:
        raise PixioError(f"workers={workers}: use 1 or more")
    if workers == 1:
        env = spec.make()
        try:
            policy = make_policy(env)
            for seed in seeds:
                yield rollout(env, policy, seed, record)
        finally:
            env.close()
        return
    yield from _parallel(spec, iter(seeds), make_policy, workers, record)


def _parallel(spec: EnvSpec, seeds: Iterator[int], make_policy, workers: int, record: bool) -> Iterator[Episode]:
    ctx = mp.get_context("spawn")  # fork would copy the parent's GL state and locks
    tasks, results = ctx.Queue(), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(spec.to_dict(), make_policy, record, tasks, results), daemon=True)
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    pending: dict[int, Episode] = {}  # by position in the seed order
    handed_out = next_out = 0
    exhausted = False
    try:

        def feed() -> None:
            nonlocal exhausted, handed_out
            while not exhausted and handed_out - next_out < 2 * workers:
                seed = next(seeds, None)
                if seed is None:
                    exhausted = True
                    return
                tasks.put((handed_out, int(seed)))
                handed_out += 1

        feed()
        while next_out < handed_out:
            while next_out not in pending:
                kind, index, payload = _get(results, procs)
                if kind == "error":
                    raise RuntimeError(f"worker failed on an episode:\n{payload}")
                pending[index] = payload
            yield pending.pop(next_out)
            next_out += 1
            feed()
    finally:
        for _ in procs:
            tasks.put(None)
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join()


def _get(results, procs):
    while True:
        try:
            return results.get(timeout=1.0)
        except queue.Empty:
            dead = [p for p in procs if not p.is_alive() and p.exitcode not in (0, None)]
            if dead:
                raise RuntimeError(f"a worker process died (exit code {dead[0].exitcode})") from None


def _worker(spec_dict: dict, make_policy, record: bool, tasks, results) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    import envs  # noqa: F401  (registers the ids; sets MUJOCO_GL)

    env = EnvSpec.from_dict(spec_dict).make()
    parent = mp.parent_process()
    # If the parent is killed, nobody drains `results`: exiting must not wait to flush it.
    results.cancel_join_thread()
    try:
        policy = make_policy(env)
        while True:
            if parent is not None and not parent.is_alive():
                return  # the parent was killed: do not linger
            try:
                task = tasks.get(timeout=1.0)
            except queue.Empty:
                continue
            if task is None:
                return
            index, seed = task
            try:
                results.put(("ok", index, rollout(env, policy, seed, record)))
            except Exception:
                results.put(("error", index, f"seed {seed}: {traceback.format_exc()}"))
    finally:
        env.close()
