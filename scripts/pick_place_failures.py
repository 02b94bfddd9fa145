"""Where a pick_place policy fails: runs it on held-out seeds and sorts every episode by what
happened to the cube (the environment's own state, which the policy never sees).

    uv run python scripts/pick_place_failures.py runs/pp/checkpoints/best --seed 50000 --episodes 50

Kinds, in the order they are tested: success; never held (no finger pad ever held the cube);
held, not lifted (the cube never rose 2 cm); still held at the end; dropped in the air (released
more than 1 cm above where it started); put down off the goal. Each episode also gives where the
policy committed to the grasp: the tool centre's horizontal offset from the cube centre when the
tool first comes below 6 cm (the expert descends from 8 cm only once it is within 0.8 cm), and
at its first close within 1.6 cm above the expert's grasp height, with the yaw error modulo 90
degrees there (a cube's faces repeat). Prints one line per episode and the counts; `--out FILE.json` keeps them.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import sys

import numpy as np

DESCENT_HEIGHT = 0.06  # below the expert's approach height (at least 8 cm), above its grasp height


def classify(env, policy, seed: int) -> dict:
    from envs.experts import GRASP_HEIGHT

    obs, _ = env.reset(seed=seed)
    policy.reset(seed)
    task = env.unwrapped
    start_z = top_z = task.cube_pos()[2]
    held_steps, drops, was_held, success, steps, grasp, descent = 0, 0, False, False, 0, None, None
    while not success and steps < task.max_episode_steps:
        action = policy(obs)
        if descent is None and task.tcp[2] < DESCENT_HEIGHT:
            descent = round(100 * float(np.linalg.norm(task.tcp[:2] - task.cube_pos()[:2])), 2)
        if grasp is None and action[-1] > 0 and task.tcp[2] < GRASP_HEIGHT + 0.016:  # the first close near the table
            offset = 100 * float(np.linalg.norm(task.tcp[:2] - task.cube_pos()[:2]))
            yaw = math.degrees(abs((task.tool_yaw - task.cube_yaw() + math.pi / 4) % (math.pi / 2) - math.pi / 4))
            grasp = {"grasp_offset_cm": round(offset, 2), "grasp_yaw_deg": round(yaw, 1)}
        obs, _, terminated, truncated, info = env.step(action)
        steps += 1
        held, z = task.held("cube"), task.cube_pos()[2]
        top_z = max(top_z, z)
        drops += was_held and not held and z > start_z + 0.01
        was_held, held_steps = held, held_steps + held
        success = bool(info["is_success"])
        if terminated or truncated:
            break
    if success:
        kind = "success"
    elif held_steps == 0:
        kind = "never held"
    elif top_z < start_z + 0.02:
        kind = "held, not lifted"
    elif was_held:
        kind = "still held at the end"
    elif drops:
        kind = "dropped in the air"
    else:
        kind = "put down off the goal"
    return {
        "seed": seed,
        "kind": kind,
        "steps": steps,
        "held_steps": int(held_steps),
        "lift_cm": round(100 * float(top_z - start_z), 1),
        "goal_distance_cm": round(100 * float(task.goal_distance(task.cube_pos())), 1),
        "descent_offset_cm": descent,
        **(grasp or {"grasp_offset_cm": None, "grasp_yaw_deg": None}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("policy", help="a saved policy folder (train-policy's checkpoints/best)")
    parser.add_argument("--seed", type=int, default=50_000, help="first episode seed (default: the validation seeds)")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--out", help="write the episodes and counts to this JSON file")
    args = parser.parse_args(argv)

    from pixio_robot.errors import PixioError
    from policies.evaluation import make_env_policy, policy_env_spec

    try:
        spec = policy_env_spec(args.policy)
        if spec.name != "pick_place":
            raise PixioError(f"{args.policy} was trained on {spec.name}: this script reads pick_place's cube and goal")
        env = spec.make()
        policy = make_env_policy(args.policy, "cpu", None, env)
    except PixioError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = []
    for seed in range(args.seed, args.seed + args.episodes):
        rows.append(classify(env, policy, seed))
        print(json.dumps(rows[-1]), flush=True)
    counts = dict(collections.Counter(r["kind"] for r in rows).most_common())
    print(counts, f"(mean steps {np.mean([r['steps'] for r in rows]):.0f})")
    for kind in counts:  # where the descent and the first grasp were, by outcome
        descents = [r["descent_offset_cm"] for r in rows if r["kind"] == kind and r["descent_offset_cm"] is not None]
        if descents:
            print(f"  {kind}: descent began {np.median(descents):.2f} cm from the cube ({len(descents)} episodes)")
        tried = [r for r in rows if r["kind"] == kind and r["grasp_offset_cm"] is not None]
        if tried:
            offsets, yaws = [r["grasp_offset_cm"] for r in tried], [r["grasp_yaw_deg"] for r in tried]
            print(
                f"  {kind}: first close {np.median(offsets):.2f} cm from the cube centre (max {max(offsets):.2f}), "
                f"yaw error {np.median(yaws):.1f} deg (max {max(yaws):.1f}), over {len(tried)} episodes"
            )
    if args.out:
        from pixio_robot.atomic import write_json

        write_json(args.out, {"policy": args.policy, "counts": counts, "episodes": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
