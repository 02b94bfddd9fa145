"""Scripted experts, and the interface every policy shares.

A policy is any object with `reset(seed)` (called at the start of each episode, with the
episode's seed) and `__call__(observation) -> action` (float32 array). Learned policies and
experts are driven the same way by the episode runner and by evaluation code.

The experts of the own tasks are closed-loop state machines that read the privileged state of
the environment they are bound to (object poses, the commanded tool pose), so they recover from
slips and from the action noise they can add (`noise`: standard deviation of Gaussian noise on
the motion part of the action, for more varied demonstrations). MetaWorld's own scripted
policies are the experts of the MetaWorld tasks (see `metaworld_env.py`).
"""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

from pixio_robot.errors import PixioError

from .base import TabletopEnv
from .tasks import DrawerOpen, PickPlace, Push, Reach, Stack

OPEN, CLOSED = -1.0, 1.0
CARRY_HEIGHT = 0.13
GRASP_HEIGHT = 0.029  # lowest grasp: the pads (2.5 cm below the tool point) stay off the table


@runtime_checkable
class Policy(Protocol):
    def reset(self, seed: int | None = None) -> None: ...

    def __call__(self, observation: dict[str, Any]) -> np.ndarray: ...


def make_expert(env: gym.Env, noise: float = 0.0, mistakes: float = 0.0) -> Policy:
    """The scripted expert of `env` (own task or MetaWorld), bound to it. `mistakes`: see
    `PickExpert` (the grasping tasks only)."""
    if not (math.isfinite(mistakes) and 0 <= mistakes <= 1):
        raise PixioError(f"mistakes={mistakes}: give a probability per episode between 0 and 1")
    base = env.unwrapped
    for env_type, expert in _EXPERTS.items():
        if isinstance(base, env_type):
            if mistakes and not issubclass(expert, PickExpert):
                raise PixioError(
                    f"mistakes={mistakes}: only the grasping tasks (pick_place, stack) have a grasp to get wrong; "
                    "use mistakes=0"
                )
            return expert(base, noise, mistakes) if mistakes else expert(base, noise)
    from .metaworld_env import MetaWorldEnv, MetaWorldExpert

    if isinstance(base, MetaWorldEnv):
        if mistakes:
            raise PixioError(f"mistakes={mistakes}: MetaWorld's scripted policies have none; use mistakes=0")
        return MetaWorldExpert(base, noise)
    raise PixioError(f"no scripted expert for {type(base).__name__}")


class TabletopExpert:
    """Moves the commanded tool pose toward a goal each step; subclasses pick the goal."""

    def __init__(self, env: TabletopEnv, noise: float = 0.0):
        if noise < 0:
            raise PixioError(f"noise={noise}: give a standard deviation >= 0")
        self.env, self.noise = env, float(noise)
        self.rng = np.random.default_rng()
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(None if seed is None else [seed, 7])
        self.phase, self.timer = "start", 0

    def __call__(self, observation=None) -> np.ndarray:
        goal, gripper = self.plan()
        action = self.toward(goal, gripper)
        self.label = np.clip(action, -1.0, 1.0).astype(np.float32)
        if self.noise > 0:
            action[:4] += self.rng.normal(0.0, self.noise, 4)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def plan(self) -> tuple[np.ndarray, float]:
        """(goal tool pose x, y, z, yaw; gripper command) for this step."""
        raise NotImplementedError

    def toward(self, goal: np.ndarray, gripper: float) -> np.ndarray:
        max_delta = np.asarray(self.env._max_delta)
        delta = (np.asarray(goal, np.float64) - self.env.target_pose) / max_delta
        delta[3] = _wrap(goal[3] - self.env.target_pose[3]) / max_delta[3]
        return np.array([*np.clip(delta, -1, 1), gripper])

    def go(self, phase: str) -> None:
        self.phase, self.timer = phase, 0

    def near(self, goal, xy: float = 0.01, z: float = 0.01, yaw: float = 0.08) -> bool:
        tcp = self.env.tcp
        return (
            np.linalg.norm(tcp[:2] - goal[:2]) < xy
            and abs(tcp[2] - goal[2]) < z
            and abs(_wrap(self.env.tool_yaw - goal[3])) < yaw
        )


class ReachExpert(TabletopExpert):
    env: Reach

    def plan(self):
        return np.array([*self.env.goal, self.env.target_pose[3]]), OPEN


class PickExpert(TabletopExpert):
    """Pick a cube and put it down at a place; shared by pick-and-place and stacking.

    `mistakes`: the probability per episode of one premature descent. Once the tool is within
    6 cm of the cube on its approach, the expert executes a descent toward a point 2.5-5 cm
    beside it (for up to 8 steps, until the tool is 4.5 cm high) while it records what it would
    have done, rise and approach again (DART at the grasp decision: the data shows the way back
    from the mistake pixel policies make, not the mistake)."""

    env: PickPlace | Stack
    cube = "cube"
    MISTAKE_RADIUS = (0.025, 0.05)

    def __init__(self, env: PickPlace | Stack, noise: float = 0.0, mistakes: float = 0.0):
        self.mistakes = float(mistakes)
        super().__init__(env, noise)

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self.mistake: dict | None = None
        if self.mistakes > 0 and self.rng.uniform() < self.mistakes:  # no draw at 0: datasets stay as they were
            angle, radius = self.rng.uniform(0, 2 * math.pi), self.rng.uniform(*self.MISTAKE_RADIUS)
            self.mistake = {"offset": radius * np.array([math.cos(angle), math.sin(angle)]), "steps": 0}

    def __call__(self, observation=None) -> np.ndarray:
        action = super().__call__(observation)  # records the label; executed unless a mistake runs
        m, env = self.mistake, self.env
        if m is None or self.phase != "approach":
            return action
        pos = env.cube_pos(self.cube)
        if m["steps"] == 0 and np.linalg.norm(env.tcp[:2] - pos[:2]) > 0.06:
            return action
        m["steps"] += 1
        if m["steps"] > 8 or env.tcp[2] < 0.045:
            self.mistake = None  # one per episode
            return action
        goal = np.array([*(pos[:2] + m["offset"]), GRASP_HEIGHT + 0.01, env.target_pose[3]])
        return np.clip(self.toward(goal, OPEN), -1.0, 1.0).astype(np.float32)

    def place(self) -> tuple[np.ndarray, float]:
        """(x, y) where the cube goes and the height of its centre there."""
        raise NotImplementedError

    def plan(self):
        env, cube = self.env, self.cube
        pos, half = env.cube_pos(cube), env.cube_half(cube)
        yaw = _grasp_yaw(env.cube_yaw(cube), env.target_pose[3])
        (px, py), pz = self.place()
        above = max(CARRY_HEIGHT, pz + half + 0.08)
        self.timer += 1
        carrying = self.phase in ("lift", "carry", "lower")
        if carrying and not env.held(cube):
            self.go("approach")  # dropped it: start over from where it lies
        if self.phase == "start":
            self.go("approach")
        if self.phase == "approach":
            goal = np.array([pos[0], pos[1], max(pos[2] + half + 0.05, 0.08), yaw])
            if self.near(goal, xy=0.008, z=0.03, yaw=0.06):
                self.go("descend")
            return goal, OPEN
        if self.phase == "descend":
            goal = np.array([pos[0], pos[1], max(pos[2] - 0.004, GRASP_HEIGHT), yaw])
            if self.near(goal, xy=0.012, z=0.006, yaw=0.1) or self.timer > 25:
                self.go("grasp")
            return goal, OPEN
        hold = env.target_pose
        if self.phase == "grasp":
            if self.timer >= 5:
                if env.held(cube):
                    self.offset = env.tcp - pos  # keep the grip's offset when putting it down
                    self.go("lift")
                else:
                    self.go("approach")
            return hold, CLOSED
        if self.phase == "lift":
            goal = np.array([*hold[:2], above, hold[3]])
            if env.tcp[2] > above - 0.03:
                self.go("carry")
            return goal, CLOSED
        if self.phase == "carry":
            goal = np.array([px + self.offset[0], py + self.offset[1], above, hold[3]])
            if np.linalg.norm(pos[:2] - [px, py]) < 0.006:
                self.go("lower")
            return goal, CLOSED
        if self.phase == "lower":
            goal = np.array([px + self.offset[0], py + self.offset[1], pz + self.offset[2] + 0.004, hold[3]])
            if pos[2] < pz + 0.006 or self.timer > 40:
                self.go("release")
            return goal, CLOSED
        if self.phase == "release":
            if self.timer >= 4:
                self.go("retreat")
            return hold, OPEN
        # retreat: straight up, open; if the cube did not end where it should, try again
        if np.linalg.norm(pos[:2] - [px, py]) > 0.02 and self.timer > 3:
            self.go("approach")
        return np.array([*hold[:2], above, hold[3]]), OPEN


class PickPlaceExpert(PickExpert):
    def place(self):
        return self.env.goal, self.env.cube_half("cube")


class StackExpert(PickExpert):
    env: Stack

    def place(self):
        base = self.env.cube_pos("base")
        return base[:2], base[2] + self.env.cube_half("base") + self.env.cube_half("cube")


class PushExpert(TabletopExpert):
    """Get behind the cube on the line through the goal, then push along that line."""

    env: Push
    push_height = GRASP_HEIGHT

    def plan(self):
        env = self.env
        pos, half, goal = env.cube_pos(), env.cube_half(), env.goal
        to_goal = goal - pos[:2]
        dist = np.linalg.norm(to_goal)
        u = to_goal / max(dist, 1e-6)
        yaw = _wrap_half(math.atan2(u[1], u[0]))  # pads side-on to the push direction
        behind = pos[:2] - u * (half * 1.5 + 0.012 + 0.015)
        tcp = env.tcp
        rel = tcp[:2] - pos[:2]
        lateral = abs(rel[0] * u[1] - rel[1] * u[0])
        along = rel @ u  # negative: behind the cube
        self.timer += 1
        if self.phase == "start":
            self.go("above")
        aligned = lateral < 0.012 and along < -(half + 0.01)
        if self.phase == "push" and not (lateral < 0.02 and along < -half * 0.8):
            self.go("above")  # lost the cube (it turned or slid aside): line up again
        if self.phase == "above":
            goal_pose = np.array([*behind, 0.09, yaw])
            if tcp[2] > 0.06 and self.near(goal_pose, xy=0.01, z=0.05, yaw=0.1):
                self.go("down")
            elif tcp[2] < 0.06 and not aligned:
                goal_pose = np.array([*tcp[:2], 0.09, yaw])  # rise before crossing over the cube
            return goal_pose, CLOSED
        if self.phase == "down":
            goal_pose = np.array([*behind, self.push_height, yaw])
            if tcp[2] < self.push_height + 0.01:
                self.go("push")
            return goal_pose, CLOSED
        # push: aim a little past the cube's far side along the line, slowing near the goal
        step = min(0.03, dist)
        goal_pose = np.array([*(pos[:2] - u * (half + 0.02) + u * step + u * 0.01), self.push_height, yaw])
        return goal_pose, CLOSED


class DrawerExpert(TabletopExpert):
    """Straddle the handle bar with the fingers, close them on it, pull along the slide."""

    env: DrawerOpen

    def plan(self):
        env = self.env
        handle, cab_yaw = env.handle, env.cabinet_yaw
        pull = -np.array([math.cos(cab_yaw), math.sin(cab_yaw)])
        yaw = _wrap_half(cab_yaw)  # fingers close along the pull axis
        tcp = env.tcp
        self.timer += 1
        if self.phase == "start":
            self.go("approach")
        if self.phase in ("grasp", "pull") and np.linalg.norm(tcp - handle) > 0.035:
            self.go("approach")
        if self.phase == "approach":
            goal = np.array([handle[0], handle[1], handle[2] + 0.08, yaw])
            if self.near(goal, xy=0.008, z=0.03, yaw=0.06):
                self.go("descend")
            return goal, 0.0
        if self.phase == "descend":
            goal = np.array([handle[0], handle[1], handle[2], yaw])
            if self.near(goal, xy=0.01, z=0.006, yaw=0.1) or self.timer > 25:
                self.go("grasp")
            return goal, 0.0
        if self.phase == "grasp":
            if self.timer >= 5:
                self.go("pull")
            return env.target_pose, CLOSED
        goal = np.array([*(handle[:2] + pull * 0.05), handle[2], yaw])
        return goal, CLOSED


_EXPERTS: dict[type, type[TabletopExpert]] = {
    Reach: ReachExpert,
    Push: PushExpert,
    PickPlace: PickPlaceExpert,
    Stack: StackExpert,
    DrawerOpen: DrawerExpert,
}


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


def _wrap_half(angle: float) -> float:
    """An angle modulo pi (a parallel gripper is symmetric), in [-pi/2, pi/2)."""
    return (angle + math.pi / 2) % math.pi - math.pi / 2


def _grasp_yaw(cube_yaw: float, current: float) -> float:
    """The cube's faces repeat every 90 degrees: the grasp yaw nearest the current one."""
    candidates = [_wrap(cube_yaw + k * math.pi / 2) for k in range(4)]
    candidates = [y for y in candidates if abs(y) < math.pi / 2 - 0.02]
    return min(candidates, key=lambda y: abs(_wrap(y - current)))
