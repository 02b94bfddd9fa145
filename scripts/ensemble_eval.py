"""Success of an ensemble: several saved policies (the same data, other training seeds) run
together, their actions averaged at every step.

    uv run python scripts/ensemble_eval.py runs/pp_100/checkpoints/best runs/pp_200/checkpoints/best \
        --seed 50000 --episodes 50

An experiment, not a command of the toolkit: each member encodes the images itself (the
evaluation does the encoder's work once per member), and the members must share an environment.
Prints the successes with their 95% Wilson interval as one JSON line; `--out FILE.json` keeps it.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys

import numpy as np


class Ensemble:
    """The envs policy interface over several policies: the mean of their actions."""

    def __init__(self, members):
        self.members = members

    def reset(self, seed: int | None = None) -> None:
        for member in self.members:
            member.reset(seed)

    def __call__(self, obs) -> np.ndarray:
        return np.mean([member(obs) for member in self.members], axis=0).astype(np.float32)


def make_ensemble(paths: list[str], env) -> Ensemble:
    """Worker-side factory (picklable through functools.partial)."""
    from policies.evaluation import make_env_policy

    return Ensemble([make_env_policy(path, "cpu", 1, env) for path in paths])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policies", nargs="+", help="saved policy folders (checkpoints/best)")
    parser.add_argument("--seed", type=int, default=50000, help="first episode seed (default: the validation seeds)")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", help="also write the result to this JSON file")
    args = parser.parse_args(argv)

    import envs
    from policies.evaluation import policy_env_spec, wilson_interval

    specs = [policy_env_spec(path) for path in args.policies]
    if any(spec.to_dict() != specs[0].to_dict() for spec in specs):
        print("the policies were trained on different environments: an ensemble needs one", file=sys.stderr)
        return 2
    seeds = list(range(args.seed, args.seed + args.episodes))
    factory = functools.partial(make_ensemble, args.policies)
    wins = [bool(ep.successes.any()) for ep in envs.run_episodes(specs[0], seeds, factory, args.workers, record=False)]
    low, high = wilson_interval(sum(wins), len(wins))
    result = {"policies": args.policies, "seeds": [seeds[0], seeds[-1]], "successes": sum(wins), "episodes": len(wins)}
    result["ci95"] = [low, high]
    print(json.dumps(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
