"""`TabletopEnv`: the gymnasium environment every own task shares.

Actions (float32, 5): tool deltas (dx, dy, dz, dyaw) in [-1, 1], scaled to at most
`MAX_SPEED / control_hz` metres and `MAX_YAW_RATE / control_hz` radians per step, then the
gripper command in [-1, 1] (-1 open, +1 closed, in between a partly open target). The deltas
move a commanded tool pose (kept inside the workspace and within `MAX_LEAD` of the measured
tool, so a blocked arm never winds up); the arm's joint targets are its exact inverse
kinematics. Values outside [-1, 1] are clipped; a wrong shape or a NaN raises `PixioError`
and leaves the episode untouched.

Observations (LeRobot's gym conventions): `agent_pos` (float32: measured tool x, y, z, yaw,
gripper opening in metres, then the commanded tool pose x, y, z, yaw that the action deltas
move: it may lead the measured tool by up to `MAX_LEAD`, and a policy that does not see it
cannot tell what its next action will do); `pixels` (uint8 HWC, or a dict camera -> image with several cameras);
with `depth=True` `depth` (float32 metres, metric z, 0 = nothing hit), with
`segmentation=True` `segmentation` (int32 MuJoCo body ids, -1 = nothing hit), with
`environment_state=True` the task's object state (float32). `info["is_success"]` on every
step; an episode terminates once success has held for `success_hold` more steps (5 in the
own tasks, so that demonstrations show staying at the goal, not only reaching it; 0 ends it
at the first success) and is truncated after `time_limit` steps (the
attribute `max_episode_steps`; the option is not called that because `gymnasium.make` takes
that name for its own TimeLimit wrapper).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from pixio_robot.errors import PixioError

from . import arm, scene
from .cameras import CameraInfo, CameraRig, camera_info, look_at, parse_cameras, set_camera_pose
from .scene import CameraSpec

# Ranges of the own tasks' randomisation. `benchmark` is calibrated against what behaviour-
# cloning benchmarks use (MetaWorld: objects over 10-20 cm, 5 cm tolerance; robomimic Lift:
# +-3 cm): objects within about 10 x 10 cm, tolerances 4-5 cm. `hard` spreads them over the
# whole reachable table (22 x 36 to 33 x 44 cm, 3-4 cm tolerances), 10-50x the area.
DIFFICULTIES = ("benchmark", "hard")
MAX_SPEED = 0.4  # m/s of the commanded tool pose at full action
MAX_YAW_RATE = 3.0  # rad/s
MAX_LEAD = 0.05  # the commanded pose stays this close to the measured tool
SETTLE_STEPS = 40  # physics steps after a reset, before the first observation
STATE_NAMES = ("tool_x", "tool_y", "tool_z", "tool_yaw", "gripper_opening", "cmd_x", "cmd_y", "cmd_z", "cmd_yaw")
ACTION_NAMES = ("dx", "dy", "dz", "dyaw", "gripper")
# Constructor options every environment takes for its observations (see SimEnv._init_observations).
OBSERVATION_OPTIONS = (
    "cameras",
    "image_size",
    "depth",
    "segmentation",
    "environment_state",
    "shadows",
    "antialias",
    "render_mode",
)


class SimEnv(gym.Env):
    """What the own tasks and the MetaWorld adapter share: cameras, observation layout, episode
    bookkeeping, rendering and clean-up. Subclasses set `model`, `data` and `camera_names`, then
    call `_init_observations`."""

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 20}
    model: mujoco.MjModel
    data: mujoco.MjData
    camera_names: tuple[str, ...]
    control_hz: int
    max_episode_steps: int
    render_camera: str = "front"

    def _init_observations(
        self,
        options: dict,
        state_bounds: tuple[np.ndarray, np.ndarray],
        env_state_bounds: tuple[np.ndarray, np.ndarray],
        action_dim: int,
    ) -> None:
        """Cameras and spaces from the constructor's `OBSERVATION_OPTIONS` (`options`)."""
        cameras, image_size, render_mode = options["cameras"], options["image_size"], options["render_mode"]
        depth, segmentation = options["depth"], options["segmentation"]
        environment_state, shadows, antialias = options["environment_state"], options["shadows"], options["antialias"]
        if render_mode not in (None, "rgb_array"):
            raise PixioError(f"render_mode={render_mode!r}: only 'rgb_array' (or None) is supported")
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": self.control_hz}
        self.cameras = parse_cameras(cameras, image_size, list(self.camera_names)) if cameras else {}
        self.depth, self.segmentation = bool(depth), bool(segmentation)
        self.environment_state = bool(environment_state)
        self.shadows, self.antialias = bool(shadows), bool(antialias)
        self.rig = (
            CameraRig(self.model, self.cameras, depth, segmentation, shadows, antialias) if self.cameras else None
        )
        self._render_rig: CameraRig | None = None
        self.action_space = spaces.Box(-1.0, 1.0, (action_dim,), np.float32)
        lo, hi = (np.asarray(b, np.float32) for b in state_bounds)
        s: dict[str, spaces.Space] = {"agent_pos": spaces.Box(lo, hi, dtype=np.float32)}
        if self.environment_state:
            lo, hi = (np.asarray(b, np.float32) for b in env_state_bounds)
            s["environment_state"] = spaces.Box(lo, hi, dtype=np.float32)
        if self.rig is not None:
            s.update(self.rig.observation_spaces())
        self.observation_space = spaces.Dict(s)
        self._steps, self._done, self._held = 0, True, 0

    def _observe(self, agent_pos: np.ndarray, env_state: np.ndarray | None) -> dict:
        obs: dict[str, Any] = {"agent_pos": np.asarray(agent_pos, np.float32)}
        if self.environment_state:
            obs["environment_state"] = np.asarray(env_state, np.float32)
        if self.rig is not None:
            obs.update(self.rig.observe(self.data))
        return obs

    def _check_step(self, action, dim: int) -> list[float]:
        """The action as floats clipped to [-1, 1]; bad input raises before anything changes."""
        try:
            a = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError):
            raise PixioError(f"action must be a numeric array of shape ({dim},)") from None
        if a.shape != (dim,):
            raise PixioError(f"action has shape {a.shape}: expected ({dim},)")
        values = a.tolist()
        if not all(map(math.isfinite, values)):
            raise PixioError(f"action {values} is not finite (NaN or inf): the episode is unchanged")
        if self._done:
            raise PixioError("the episode has ended (success or time limit): call reset() before stepping again")
        return [min(max(v, -1.0), 1.0) for v in values]

    success_hold: int = 0  # steps an episode goes on after success (while it lasts) before it ends

    def _end_step(self, success: bool) -> tuple[bool, bool]:
        """Count the step; (terminated, truncated)."""
        self._steps += 1
        self._held = self._held + 1 if success else 0
        terminated = self._held > self.success_hold
        truncated = self._steps >= self.max_episode_steps and not terminated
        self._done = terminated or truncated
        return terminated, truncated

    @property
    def steps(self) -> int:
        """Steps taken in the current episode."""
        return self._steps

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        if self.rig is not None:
            return self.rig.render(self.data)["rgb"][next(iter(self.cameras))]
        if self._render_rig is None:
            self._render_rig = CameraRig(self.model, {self.render_camera: (240, 320)}, shadows=self.shadows)
        return self._render_rig.render(self.data)["rgb"][self.render_camera]

    def close(self):
        for rig in (getattr(self, "rig", None), getattr(self, "_render_rig", None)):
            if rig is not None:
                rig.close()
        self.rig = self._render_rig = None

    def camera_info(self, name: str, size: tuple[int, int] | None = None) -> CameraInfo:
        """Intrinsics and current camera-to-world pose (OpenCV convention) of any camera, at its
        observation size (or `size` = (height, width) for a camera not observed)."""
        return camera_info(self.model, self.data, name, size or self.cameras.get(name, (480, 640)))


class TabletopEnv(SimEnv):
    """Base of the own tasks: subclasses add objects, randomise them, and define success."""

    task_name: ClassVar[str] = ""  # short name, e.g. "pick_place"
    instruction: ClassVar[str] = ""  # the task string stored with demonstrations
    default_max_steps: ClassVar[int] = 100  # at 20 Hz; scaled with control_hz
    state_names = STATE_NAMES
    action_names = ACTION_NAMES
    object_state_names: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        cameras: Any = ("front",),
        image_size: Any = 128,
        depth: bool = False,
        segmentation: bool = False,
        environment_state: bool = False,
        control_hz: int = 20,
        time_limit: int | None = None,
        random_lighting: bool = False,
        camera_jitter: float = 0.0,
        shadows: bool = False,
        antialias: bool = False,
        extra_cameras: int = 0,
        success_hold: int = 5,
        difficulty: str = "benchmark",
        render_mode: str | None = None,
    ):
        if not isinstance(control_hz, (int, np.integer)) or control_hz < 1 or 500 % control_hz:
            raise PixioError(f"control_hz={control_hz}: use a divisor of 500 (the physics rate), e.g. 10, 20, 25, 50")
        if not 0 <= camera_jitter <= 0.2:
            raise PixioError(f"camera_jitter={camera_jitter}: give metres between 0 and 0.2")
        if time_limit is not None and not 1 <= int(time_limit) <= 100_000:
            raise PixioError(f"time_limit={time_limit}: use 1 to 100000 steps")
        if not 0 <= int(extra_cameras) <= 256:
            raise PixioError(f"extra_cameras={extra_cameras}: use 0 to 256")
        if not 0 <= int(success_hold) <= 1000:
            raise PixioError(f"success_hold={success_hold}: use 0 to 1000 steps")
        self.success_hold = int(success_hold)
        if difficulty not in DIFFICULTIES:
            raise PixioError(f"difficulty={difficulty!r}: choose {' or '.join(DIFFICULTIES)}")
        self.difficulty = difficulty
        self.control_hz = int(control_hz)
        self.substeps = 500 // self.control_hz
        self.max_episode_steps = int(time_limit or self.default_max_steps * self.control_hz // 20)
        self.random_lighting, self.camera_jitter = bool(random_lighting), float(camera_jitter)
        self.workspace = arm.Workspace()
        self._max_delta = (*(MAX_SPEED / self.control_hz,) * 3, MAX_YAW_RATE / self.control_hz)

        extra = tuple(CameraSpec(f"view_{i:03d}", (1.0, 0.0, 0.5), (0.0, 0.0, 0.0)) for i in range(extra_cameras))
        self.model = mujoco.MjModel.from_xml_string(scene.build(self._objects_mjcf(), extra))
        self.data = mujoco.MjData(self.model)
        self.camera_names = (*scene.ALL_CAMERAS, *(c.name for c in extra))
        self._arm_qpos = [self.model.joint(n).qposadr[0] for n in arm.ARM_JOINTS]
        self._finger_qpos = [self.model.joint(n).qposadr[0] for n in ("finger_left", "finger_right")]
        self._tcp = self.model.site("tcp").id
        self._hand = self.model.body("hand").id
        self._pad_ids = np.array([self.model.geom("pad_left").id, self.model.geom("pad_right").id])
        # Views into MjData, which never reallocates: the hot path skips the attribute lookups.
        self._tcp_pos = self.data.site_xpos[self._tcp]
        self._hand_xmat = self.data.xmat[self._hand]
        self._defaults = {
            "light_pos": self.model.light_pos.copy(),
            "light_dir": self.model.light_dir.copy(),
            "light_diffuse": self.model.light_diffuse.copy(),
            "cam_pos": self.model.cam_pos.copy(),
            "cam_quat": self.model.cam_quat.copy(),
        }
        self._setup()
        n = len(self.object_state_names)
        self._init_observations(
            {k: v for k, v in locals().items() if k in OBSERVATION_OPTIONS},
            (np.array([-2, -2, -2, -math.pi, -0.01, -2, -2, -2, -4]), np.array([2, 2, 2, math.pi, 0.1, 2, 2, 2, 4])),
            (np.full(n, -10.0), np.full(n, 10.0)),
            len(ACTION_NAMES),
        )
        self._target = arm.HOME.copy()

    # ---- what a task provides -------------------------------------------------------------

    def _objects_mjcf(self) -> str:
        return ""

    def _setup(self) -> None:
        """Look up the task's ids in the compiled model."""

    def _randomize(self, rng: np.random.Generator) -> None:
        """Sizes, colours and poses of the task's objects for a new episode."""

    def _success(self) -> bool:
        raise NotImplementedError

    def object_state(self) -> np.ndarray:
        return np.zeros(0, np.float32)

    # ---- gymnasium API --------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        # Separate streams: turning lighting or camera randomisation on keeps the task layout.
        rng, look = (np.random.default_rng(s) for s in self.np_random.integers(2**63, size=2))
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        self._randomize_appearance(look)
        self._randomize(rng)
        qpos = d.qpos.copy()
        mujoco.mj_setConst(m, d)  # masses changed: refresh the derived constants (uses d as scratch)
        d.qpos[:], d.qvel[:] = qpos, 0.0
        start = arm.HOME + np.concatenate([rng.uniform(-0.04, 0.04, 3), rng.uniform(-0.2, 0.2, 1)])
        self._target = self.workspace.clip(start)
        self._set_arm(self._target, gripper=-1.0, teleport=True)
        mujoco.mj_step(m, d, nstep=SETTLE_STEPS)
        self._steps, self._done, self._held = 0, False, 0
        return self._observation(), {"is_success": False}

    def step(self, action):
        a = self._check_step(action, len(ACTION_NAMES))
        # Plain floats: on 4-vectors numpy's per-call cost would exceed all the arithmetic.
        target = [v + d * s for v, d, s in zip(self._target.tolist(), a, self._max_delta, strict=False)]
        tcp = self._tcp_pos.tolist()
        for i in range(3):  # stay near the measured tool, so a blocked arm never winds up
            target[i] = min(max(target[i], tcp[i] - MAX_LEAD), tcp[i] + MAX_LEAD)
        target = [
            min(max(v, lo), hi) for v, lo, hi in zip(target, self.workspace.low, self.workspace.high, strict=True)
        ]
        self._target = np.array(target)
        self._set_arm(target, a[4])
        mujoco.mj_step(self.model, self.data, nstep=self.substeps)
        success = bool(self._success())
        terminated, truncated = self._end_step(success)
        return self._observation(), float(success), terminated, truncated, {"is_success": success}

    # ---- state the experts and recorders read ---------------------------------------------

    @property
    def tcp(self) -> np.ndarray:
        """Measured tool centre point (world, metres)."""
        return self._tcp_pos.copy()

    @property
    def tool_yaw(self) -> float:
        xmat = self._hand_xmat  # row-major: the hand's x axis is (xmat[0], xmat[3], xmat[6])
        return _wrap(math.atan2(xmat[3], xmat[0]) + math.pi)

    @property
    def target_pose(self) -> np.ndarray:
        """Commanded tool pose (x, y, z, yaw) that the deltas move."""
        return self._target.copy()

    @property
    def gripper_opening(self) -> float:
        q = self.data.qpos
        return float(q[self._finger_qpos[0]] + q[self._finger_qpos[1]])

    def agent_pos(self) -> np.ndarray:
        out = np.empty(len(STATE_NAMES), np.float32)
        out[:3] = self._tcp_pos
        out[3], out[4] = self.tool_yaw, self.gripper_opening
        out[5:] = self._target
        return out

    def place_camera(self, name: str, cam2world_cv: np.ndarray) -> None:
        """Move a world camera (e.g. an extra `view_*` camera) to an OpenCV camera-to-world pose."""
        if name not in self.camera_names:
            raise PixioError(f"unknown camera {name!r}: choose from {', '.join(self.camera_names)}")
        set_camera_pose(self.model, self.model.camera(name).id, cam2world_cv)
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_camlight(self.model, self.data)

    def touching(self, geom_id: int) -> int:
        """How many finger pads touch a geom."""
        geoms = self.data.contact.geom[: self.data.ncon]  # (ncon, 2)
        with_geom = (geoms == geom_id).any(axis=1)
        with_pad = np.isin(geoms, self._pad_ids).any(axis=1)
        return int(np.count_nonzero(with_geom & with_pad))

    # ---- internals ------------------------------------------------------------------------

    def _set_arm(self, pose: np.ndarray, gripper: float, teleport: bool = False) -> None:
        q = arm.inverse_kinematics(pose)
        fingers = arm.finger_target(gripper)
        ctrl = self.data.ctrl
        ctrl[:5] = q
        ctrl[5] = fingers
        if teleport:
            self.data.qpos[self._arm_qpos] = q
            self.data.qpos[self._finger_qpos] = fingers
            mujoco.mj_forward(self.model, self.data)

    def _observation(self) -> dict:
        return self._observe(self.agent_pos(), self.object_state() if self.environment_state else None)

    def _randomize_appearance(self, rng: np.random.Generator) -> None:
        m, base = self.model, self._defaults
        m.light_pos[:], m.light_dir[:], m.light_diffuse[:] = base["light_pos"], base["light_dir"], base["light_diffuse"]
        m.cam_pos[:], m.cam_quat[:] = base["cam_pos"], base["cam_quat"]
        if self.random_lighting:
            for i in range(m.nlight):
                direction = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6), -1.0])
                m.light_dir[i] = direction / np.linalg.norm(direction)
                m.light_pos[i] = -2.0 * m.light_dir[i]
                m.light_diffuse[i] = rng.uniform(0.3, 0.9) * rng.uniform(0.85, 1.0, 3)
            m.vis.headlight.ambient[:] = rng.uniform(0.2, 0.45)
            m.vis.headlight.diffuse[:] = rng.uniform(0.25, 0.55)
        if self.camera_jitter > 0:
            for spec in scene.CAMERAS:
                cam = m.camera(spec.name).id
                eye = np.array(spec.pos) + _in_ball(rng, self.camera_jitter)
                target = np.array(spec.target) + _in_ball(rng, self.camera_jitter)
                T = np.eye(4)
                T[:3, :3], T[:3, 3] = look_at(eye, target), eye
                set_camera_pose(m, cam, T)

    # helpers for tasks

    def set_box(self, geom: int, half: np.ndarray, rgba: np.ndarray, density: float = 400.0) -> None:
        """Resize and recolour a box geom (collision bounds and its body's inertia follow)."""
        m = self.model
        half = np.asarray(half, np.float64)
        m.geom_size[geom] = half
        m.geom_rbound[geom] = np.linalg.norm(half)
        m.geom_aabb[geom] = [0, 0, 0, *half]
        m.geom_rgba[geom] = rgba
        body = m.geom_bodyid[geom]
        mass = density * 8 * np.prod(half)
        m.body_mass[body] = mass
        m.body_inertia[body] = (
            mass / 3 * np.array([half[1] ** 2 + half[2] ** 2, half[0] ** 2 + half[2] ** 2, half[0] ** 2 + half[1] ** 2])
        )

    def set_free_pose(self, joint: str, pos, yaw: float = 0.0) -> None:
        adr = self.model.joint(joint).qposadr[0]
        self.data.qpos[adr : adr + 3] = pos
        self.data.qpos[adr + 3 : adr + 7] = [math.cos(yaw / 2), 0, 0, math.sin(yaw / 2)]


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


def _in_ball(rng: np.random.Generator, radius: float) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v) * radius * rng.uniform() ** (1 / 3)


TARGET_HUE = 1 / 3  # the green of goal markers


def random_color(rng: np.random.Generator, avoid: tuple[float, ...] = (TARGET_HUE,)) -> np.ndarray:
    """A saturated opaque colour whose hue stays at least 0.12 (of the hue circle) away from
    the hues in `avoid`, so objects never blend into goal markers or each other."""
    import colorsys

    while True:
        hue = rng.uniform()
        if all(min(abs(hue - h), 1 - abs(hue - h)) >= 0.12 for h in avoid):
            break
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.5, 0.95))
    return np.array([*rgb, 1.0])


def hue_of(rgba: np.ndarray) -> float:
    import colorsys

    return colorsys.rgb_to_hsv(*rgba[:3])[0]


def yaw_of(quat: np.ndarray) -> float:
    w, x, y, z = quat
    return math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
