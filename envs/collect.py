"""`pixio-robot collect`: scripted-expert demonstrations into a LeRobotDataset v3.

    pixio-robot collect env=pick_place episodes=50 out=data/pick_place workers=2 cameras=[front,wrist]

Episodes run in parallel worker processes with consecutive seeds; they are written in seed
order, so the same command gives the same dataset. Only successful episodes are kept unless
`keep_failed=true`. `append=true` adds to a dataset of the same environment, continuing after
its last seed. Ctrl-C (or SIGTERM) keeps every finished episode.
"""

from __future__ import annotations

import itertools
import math
import signal
import sys
from pathlib import Path

from pixio_robot.errors import PixioError

from .dataset import DemoWriter, env_metadata, inspect_path
from .experts import make_expert
from .registry import EnvSpec
from .runner import expert_policy, run_episodes


def collect(cfg) -> int:
    if cfg.episodes < 1:
        raise PixioError(f"episodes={cfg.episodes}: collect at least 1")
    if cfg.workers < 1:
        raise PixioError(f"workers={cfg.workers}: use 1 or more")
    if not math.isfinite(cfg.noise) or cfg.noise < 0:  # NaN passes `< 0` and would be recorded as NaN
        raise PixioError(f"noise={cfg.noise}: give a finite standard deviation >= 0")
    spec = EnvSpec.parse(cfg.env, **cfg.env_options())
    root = Path(cfg.out)
    if inspect_path(root) == "other":  # refuse before building anything
        raise PixioError(f"{root} holds something other than a pixio-robot dataset: refusing to write there")
    env = spec.make()
    try:
        make_expert(env, cfg.noise, cfg.mistakes)  # refuses mistakes the task's expert cannot make
        meta = env_metadata(spec, env)
        env_state_dim = (
            env.observation_space["environment_state"].shape[0] if spec.kwargs.get("environment_state") else None
        )
    finally:
        env.close()
    collection = {"policy": "scripted expert", "noise": cfg.noise, "keep_failed": cfg.keep_failed}
    if cfg.mistakes:
        collection["mistakes"] = cfg.mistakes
    writer = DemoWriter(root, meta, env_state_dim, cfg.append, cfg.commit_every, collection)
    start = cfg.seed if cfg.seed is not None else writer.next_seed
    used = {e["seed"] for e in writer.episodes}
    if cfg.seed is not None and used & set(range(start, start + cfg.episodes)):
        raise PixioError(f"seed={start}: the dataset already has episodes of these seeds; leave seed unset to continue")
    max_attempts = cfg.max_attempts or 3 * cfg.episodes + 20

    from tqdm import tqdm

    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    kept = attempts = succeeded = 0
    bar = tqdm(total=cfg.episodes, desc=f"collect {spec.name}", unit="ep", disable=not cfg.progress, file=sys.stderr)
    try:
        with writer:
            episodes = run_episodes(
                spec, itertools.count(start), expert_policy(cfg.noise, cfg.mistakes), cfg.workers, record=True
            )
            try:
                for ep in episodes:
                    attempts += 1
                    succeeded += ep.success
                    if ep.success or cfg.keep_failed:
                        writer.add(ep)
                        kept += 1
                        bar.update(1)
                    bar.set_postfix(success=f"{succeeded / attempts:.0%}")
                    if kept >= cfg.episodes:
                        break
                    if attempts >= max_attempts:
                        raise PixioError(
                            f"only {kept} of {attempts} episodes succeeded: the {kept} kept are saved in {root}; "
                            "lower noise, or pass keep_failed=true"
                        )
            finally:
                episodes.close()
    except KeyboardInterrupt:
        bar.close()
        print(f"{root}: interrupted; {kept} finished episodes were kept", file=sys.stderr)
        raise
    finally:
        bar.close()
        signal.signal(signal.SIGTERM, previous)
    total = len(writer.episodes)
    print(f"{root}: {kept} episodes added ({attempts} run, seeds {start}..{start + attempts - 1}), {total} in total")
    return 0


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
