"""The own task suite: reach, push, pick-and-place, stack, drawer-open.

Each task adds its objects to the tabletop scene, draws their pose, size and colour from the
episode's generator at every reset, and says when the episode succeeded. Positions are in
metres in the world frame (origin at the centre of the table top, robot base at x = -0.5).
"""

from __future__ import annotations

import math
from typing import ClassVar

import mujoco
import numpy as np

from . import scene
from .base import TARGET_HUE, TabletopEnv, hue_of, random_color, yaw_of

# Where objects may start: in front of the robot, well inside its reach (difficulty=hard).
OBJECT_X, OBJECT_Y = (-0.15, 0.18), (-0.22, 0.22)
# difficulty=benchmark: two 10 x 10 cm areas, objects start in the first, goals lie in the second
NEAR_X, NEAR_Y = (-0.08, 0.02), (-0.05, 0.05)
FAR_X, FAR_Y = (0.06, 0.16), (-0.05, 0.05)


class Reach(TabletopEnv):
    task_name = "reach"
    instruction = "move the gripper to the green ball"
    default_max_steps = 50
    object_state_names = ("goal_x", "goal_y", "goal_z")

    @property
    def success_radius(self) -> float:
        return 0.05 if self.difficulty == "benchmark" else 0.03

    def _objects_mjcf(self) -> str:
        return scene.target_marker("goal", radius=0.04, sphere=True)

    def _setup(self) -> None:
        self._goal = self.model.body("goal").id

    def _randomize(self, rng):
        if self.difficulty == "hard":  # 45 x 50 x 25 cm
            goal = [rng.uniform(-0.2, 0.25), rng.uniform(-0.25, 0.25), rng.uniform(0.05, 0.3)]
        else:  # 15 x 15 x 10 cm, like MetaWorld's reach
            goal = [rng.uniform(-0.05, 0.1), rng.uniform(-0.075, 0.075), rng.uniform(0.12, 0.22)]
        self.model.body_pos[self._goal] = goal

    @property
    def goal(self) -> np.ndarray:
        return self.model.body_pos[self._goal].copy()

    def _success(self) -> bool:
        return bool(np.linalg.norm(self.tcp - self.goal) < self.success_radius)

    def object_state(self) -> np.ndarray:
        return self.goal.astype(np.float32)


class _CubeTask(TabletopEnv):
    """Tasks with free cubes: helpers to place and read them."""

    cube_names: ClassVar[tuple[str, ...]] = ("cube",)

    def _setup(self) -> None:
        self._cube_geoms = {n: self.model.geom(n).id for n in self.cube_names}
        self._cube_qpos = {n: self.model.joint(n).qposadr[0] for n in self.cube_names}
        self._cube_pose = {n: self.data.qpos[a : a + 7] for n, a in self._cube_qpos.items()}  # views

    def place_cube(self, name: str, rng, half: float, xy, avoid: tuple[float, ...] = (TARGET_HUE,)) -> None:
        self.set_box(self._cube_geoms[name], np.full(3, half), random_color(rng, avoid))
        self.set_free_pose(name, [xy[0], xy[1], scene.TABLE_TOP + half], rng.uniform(-math.pi, math.pi))

    def cube_pos(self, name: str = "cube") -> np.ndarray:
        return self._cube_pose[name][:3].copy()

    def cube_quat(self, name: str = "cube") -> np.ndarray:
        return self._cube_pose[name][3:].copy()

    def cube_yaw(self, name: str = "cube") -> float:
        return yaw_of(self.cube_quat(name))

    def cube_half(self, name: str = "cube") -> float:
        return float(self.model.geom_size[self._cube_geoms[name]][0])

    def held(self, name: str = "cube") -> bool:
        """Both finger pads touch the cube."""
        return self.touching(self._cube_geoms[name]) >= 2

    def released(self, name: str = "cube") -> bool:
        return self.touching(self._cube_geoms[name]) == 0


def _sample_apart(rng, anchor, low: float, high: float, x=OBJECT_X, y=OBJECT_Y) -> np.ndarray:
    """A point in the object area at a distance in [low, high] from `anchor`."""
    for _ in range(1000):
        p = np.array([rng.uniform(*x), rng.uniform(*y)])
        if low <= np.linalg.norm(p - anchor) <= high:
            return p
    raise RuntimeError("could not place objects apart")  # not reached with the ranges used


class _CubeToGoal(_CubeTask):
    """One cube and a goal marker on the table (push, pick-and-place)."""

    object_state_names = ("cube_x", "cube_y", "cube_z", "cube_qw", "cube_qx", "cube_qy", "cube_qz", "goal_x", "goal_y")
    marker_radius = 0.04

    def _objects_mjcf(self) -> str:
        return scene.cube("cube") + scene.target_marker("goal", radius=self.marker_radius)

    def _setup(self) -> None:
        super()._setup()
        self._goal = self.model.body("goal").id
        self._goal_pos = self.model.body_pos[self._goal]  # a view: moves with place_goal

    def place_goal(self, xy) -> None:
        self.model.body_pos[self._goal] = [xy[0], xy[1], scene.TABLE_TOP + 0.001]

    @property
    def goal(self) -> np.ndarray:
        return self.model.body_pos[self._goal][:2].copy()

    def goal_distance(self, cube_pos: np.ndarray | None = None) -> float:
        x, y, _ = (self.cube_pos() if cube_pos is None else cube_pos).tolist()
        gx, gy, _ = self._goal_pos.tolist()
        return math.hypot(x - gx, y - gy)

    def object_state(self) -> np.ndarray:
        return np.concatenate([self.cube_pos(), self.cube_quat(), self.goal]).astype(np.float32)


class Push(_CubeToGoal):
    task_name = "push"
    instruction = "push the cube onto the green target"
    default_max_steps = 150
    marker_radius = 0.045

    @property
    def success_radius(self) -> float:
        return 0.05 if self.difficulty == "benchmark" else 0.04

    def _randomize(self, rng):
        if self.difficulty == "hard":
            xy = np.array([rng.uniform(-0.1, 0.12), rng.uniform(-0.18, 0.18)])
            self.place_cube("cube", rng, rng.uniform(0.02, 0.03), xy)
            self.place_goal(_sample_apart(rng, xy, 0.12, 0.25, x=(-0.18, 0.2), y=(-0.24, 0.24)))
        else:
            xy = np.array([rng.uniform(*NEAR_X), rng.uniform(*NEAR_Y)])
            self.place_cube("cube", rng, rng.uniform(0.022, 0.028), xy)
            self.place_goal(_sample_apart(rng, xy, 0.08, 0.25, x=FAR_X, y=FAR_Y))

    def _success(self) -> bool:
        return self.goal_distance() < self.success_radius


class PickPlace(_CubeToGoal):
    task_name = "pick_place"
    instruction = "pick up the cube and place it on the green target"
    default_max_steps = 150

    @property
    def success_radius(self) -> float:
        return 0.04 if self.difficulty == "benchmark" else 0.03

    def _randomize(self, rng):
        if self.difficulty == "hard":
            xy = np.array([rng.uniform(*OBJECT_X), rng.uniform(*OBJECT_Y)])
            self.place_cube("cube", rng, rng.uniform(0.018, 0.027), xy)
            self.place_goal(_sample_apart(rng, xy, 0.12, 0.3))
        else:
            xy = np.array([rng.uniform(*NEAR_X), rng.uniform(*NEAR_Y)])
            self.place_cube("cube", rng, rng.uniform(0.02, 0.025), xy)
            self.place_goal(_sample_apart(rng, xy, 0.08, 0.25, x=FAR_X, y=FAR_Y))

    def _success(self) -> bool:
        pos = self.cube_pos()
        on_table = pos[2] < scene.TABLE_TOP + self.cube_half() + 0.005
        return self.goal_distance(pos) < self.success_radius and on_table and self.released()


class Stack(_CubeTask):
    task_name = "stack"
    instruction = "stack the small cube on top of the large cube"
    default_max_steps = 150
    cube_names = ("cube", "base")
    object_state_names = (
        *(f"cube_{k}" for k in ("x", "y", "z", "qw", "qx", "qy", "qz")),
        *(f"base_{k}" for k in ("x", "y", "z", "qw", "qx", "qy", "qz")),
    )

    def _objects_mjcf(self) -> str:
        return scene.cube("cube") + scene.cube("base")

    def _randomize(self, rng):
        hard = self.difficulty == "hard"
        xy = np.array(
            [rng.uniform(*OBJECT_X), rng.uniform(*OBJECT_Y)] if hard else [rng.uniform(*NEAR_X), rng.uniform(*NEAR_Y)]
        )
        self.place_cube("cube", rng, rng.uniform(0.018, 0.024), xy)
        top_hue = hue_of(self.model.geom_rgba[self._cube_geoms["cube"]])
        base_xy = _sample_apart(rng, xy, 0.12, 0.3) if hard else _sample_apart(rng, xy, 0.08, 0.25, x=FAR_X, y=FAR_Y)
        self.place_cube("base", rng, rng.uniform(0.027, 0.034), base_xy, avoid=(TARGET_HUE, top_hue))

    def _success(self) -> bool:
        top, base = self.cube_pos("cube"), self.cube_pos("base")
        h_top, h_base = self.cube_half("cube"), self.cube_half("base")
        centred = np.linalg.norm(top[:2] - base[:2]) < 0.6 * h_base
        resting = abs(top[2] - base[2] - h_top - h_base) < 0.008
        base_down = base[2] < scene.TABLE_TOP + h_base + 0.005
        return bool(centred and resting and base_down and self.released("cube"))

    def object_state(self) -> np.ndarray:
        parts = [self.cube_pos("cube"), self.cube_quat("cube"), self.cube_pos("base"), self.cube_quat("base")]
        return np.concatenate(parts).astype(np.float32)


class DrawerOpen(TabletopEnv):
    task_name = "drawer_open"
    instruction = "open the drawer"
    default_max_steps = 100
    object_state_names = ("handle_x", "handle_y", "handle_z", "cabinet_yaw", "drawer_opening")
    success_opening = 0.1

    def _objects_mjcf(self) -> str:
        return scene.cabinet("cabinet")

    def _setup(self) -> None:
        m = self.model
        self._cabinet = m.body("cabinet").id
        self._drawer_qpos = m.joint("drawer").qposadr[0]
        self._handle = m.site("handle").id
        self._furniture = [m.geom(f"cabinet_{p}").id for p in ("top", "left", "right", "back")]
        self._drawer_geoms = [i for i in range(m.ngeom) if m.geom_bodyid[i] == m.body("drawer").id]
        self._handle_geoms = {m.geom(n).id for n in ("handle", "handle_post_l", "handle_post_r")}

    def _randomize(self, rng):
        m = self.model
        if self.difficulty == "hard":
            yaw = rng.uniform(-0.35, 0.35)
            m.body_pos[self._cabinet] = [rng.uniform(0.1, 0.22), rng.uniform(-0.15, 0.15), scene.TABLE_TOP]
        else:  # 10 x 10 cm, +-0.15 rad
            yaw = rng.uniform(-0.15, 0.15)
            m.body_pos[self._cabinet] = [rng.uniform(0.11, 0.21), rng.uniform(-0.05, 0.05), scene.TABLE_TOP]
        m.body_quat[self._cabinet] = [math.cos(yaw / 2), 0, 0, math.sin(yaw / 2)]
        body_color, drawer_color = random_color(rng), random_color(rng)
        for g in self._furniture:
            m.geom_rgba[g] = body_color
        for g in self._drawer_geoms:
            if g not in self._handle_geoms:
                m.geom_rgba[g] = drawer_color
        self.data.qpos[self._drawer_qpos] = rng.uniform(0.0, 0.02)
        mujoco.mj_kinematics(m, self.data)

    @property
    def handle(self) -> np.ndarray:
        return self.data.site_xpos[self._handle].copy()

    @property
    def cabinet_yaw(self) -> float:
        return yaw_of(self.model.body_quat[self._cabinet])

    @property
    def opening(self) -> float:
        return float(self.data.qpos[self._drawer_qpos])

    def _success(self) -> bool:
        return self.opening >= self.success_opening

    def object_state(self) -> np.ndarray:
        return np.array([*self.handle, self.cabinet_yaw, self.opening], np.float32)


TASKS: dict[str, type[TabletopEnv]] = {t.task_name: t for t in (Reach, Push, PickPlace, Stack, DrawerOpen)}
