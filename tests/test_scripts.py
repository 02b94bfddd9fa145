"""The analysis scripts under scripts/ and the eai-vc runner in benchmarks/ sort what they are given correctly."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

import envs
from envs.experts import make_expert

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _load(name: str, folder: Path = SCRIPTS):
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _StandStill:
    """Holds the tool where it is with the gripper open: never touches the cube."""

    def reset(self, seed=None):
        pass

    def __call__(self, obs):
        return np.array([0, 0, 0, 0, -1], np.float32)


def test_pick_place_failures_sorts_the_expert_as_success_and_a_still_arm_as_never_held():
    failures = _load("pick_place_failures")
    env = envs.make_env("pick_place", image_size=32)
    expert = failures.classify(env, make_expert(env), seed=3)
    assert expert["kind"] == "success" and expert["lift_cm"] > 2
    assert expert["grasp_offset_cm"] < 1.5  # the expert closes with the tool over the cube
    assert expert["descent_offset_cm"] < 1.5  # ... and descends only once it is over it
    still = failures.classify(env, _StandStill(), seed=3)
    assert still["kind"] == "never held" and still["held_steps"] == 0
    assert still["grasp_offset_cm"] is None and still["steps"] == env.unwrapped.max_episode_steps
    assert still["descent_offset_cm"] is None  # a still arm stays above the descent height
    env.close()


def test_eaivc_runner_resumes_a_checkpointed_run_and_restarts_one_stopped_before_its_first(tmp_path):
    runner = _load("policy_results", SCRIPTS.parent / "benchmarks")
    stillborn = tmp_path / "runs/mw-hammer/a-100"  # killed at epoch 4: a policy folder, no training state
    (stillborn / "checkpoints/last").mkdir(parents=True)
    (stillborn / "metrics.csv").write_text("step,loss\n")
    resumable = tmp_path / "runs/mw-hammer/b-100"
    (resumable / "checkpoints").mkdir(parents=True)
    (resumable / "checkpoints/step-00000245.pt").write_bytes(b"")
    train = {p: runner.eaivc_commands(tmp_path, "mw-hammer", p, 100)[-1][1] for p in ("a", "b")}
    assert "resume=true" not in train["a"] and "resume=true" in train["b"]
    runner.discard_stillborn(stillborn)
    runner.discard_stillborn(resumable)
    assert not stillborn.exists() and (resumable / "checkpoints/step-00000245.pt").exists()
