"""MetaWorld v3 behind the toolkit's conventions, with MetaWorld's own scripted policies as experts.

`MetaWorldEnv(task="assembly", cameras=..., image_size=...)` wraps one MetaWorld v3 task
(goal observable, object and goal positions drawn from the episode seed, as LeRobot does).
Observations: `agent_pos` = hand position and gripper distance (MetaWorld's first 4 state
entries: the "gripper state as proprio" of CortexBench), `pixels` (and optionally `depth`,
`segmentation`, `environment_state` = the full 39-d state) rendered with the toolkit's camera
rig, so camera intrinsics and extrinsics are exact. Actions: MetaWorld's 4-d (dx, dy, dz,
gripper) in [-1, 1]. Control runs at MetaWorld's 80 Hz. `info["is_success"]` is MetaWorld's
`success`; episodes end once success has held `success_hold` more steps (0 by default: at the
first success; CortexBench runs the whole horizon and reads success at its last step, which
`success_hold` >= `time_limit` gives) or after `time_limit` steps (MetaWorld's 500 by default).

MetaWorld's corner cameras render upside down; they are turned 180 degrees about their optical
axis here (the images and the reported extrinsics agree), and `corner2` is moved closer to
the table as in LeRobot's MetaWorld environment. The model is recompiled with the three
cameras of R3M's MetaWorld fork, which CortexBench (eai-vc) renders its MetaWorld tasks from:
`top_cap2` (its default), `left_cap2` and `right_cap2`, each at a fixed point looking at the table.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import mujoco
import numpy as np

from pixio_robot.errors import PixioError

from .base import OBSERVATION_OPTIONS, SimEnv

CORTEXBENCH_TASKS = ("assembly", "bin-picking", "button-press-topdown", "drawer-open", "hammer")
UPSIDE_DOWN_CAMERAS = ("corner", "corner2", "corner3", "corner4")
# R3M's metaworld fork (assets_v2/objects/assets/xyz_base.xml): targetbody cameras on the table
R3M_CAMERAS = {"top_cap2": (0.0, 0.9, 0.6), "left_cap2": (-0.5, 0.0, 0.4), "right_cap2": (0.3, 0.0, 0.5)}
STATE_NAMES = ("hand_x", "hand_y", "hand_z", "gripper_distance")
ACTION_NAMES = ("dx", "dy", "dz", "gripper")


def metaworld_tasks() -> list[str]:
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return [name.removesuffix("-v3") for name in ALL_V3_ENVIRONMENTS]


def _add_r3m_cameras(mw) -> None:
    """Recompile `mw`'s model with R3M_CAMERAS (only cameras are added: every body, joint and
    state index stays where MetaWorld put it). MetaWorld sets its mocap weld (`eq_data`) on the
    model it built, so that is carried over."""
    spec = mujoco.MjSpec.from_file(mw.fullpath)
    for name, pos in R3M_CAMERAS.items():
        spec.worldbody.add_camera(
            name=name, pos=pos, mode=mujoco.mjtCamLight.mjCAMLIGHT_TARGETBODY, targetbody="tablelink"
        )
    model = spec.compile()
    model.eq_data[:] = mw.model.eq_data
    mw.model = model
    mw.data = mujoco.MjData(mw.model)
    mujoco.mj_forward(mw.model, mw.data)


class MetaWorldEnv(SimEnv):
    render_camera = "corner2"
    state_names = STATE_NAMES
    action_names = ACTION_NAMES
    object_state_names = tuple(f"state_{i}" for i in range(39))

    def __init__(
        self,
        task: str = "assembly",
        cameras: Any = ("corner2",),
        image_size: Any = 128,
        depth: bool = False,
        segmentation: bool = False,
        environment_state: bool = False,
        time_limit: int | None = 500,
        success_hold: int = 0,
        shadows: bool = False,
        antialias: bool = False,
        render_mode: str | None = None,
    ):
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        name = task.removesuffix("-v3")
        if f"{name}-v3" not in ALL_V3_ENVIRONMENTS:
            raise PixioError(f"unknown MetaWorld task {task!r}: choose from {', '.join(metaworld_tasks())}")
        time_limit = 500 if time_limit is None else time_limit
        if not 1 <= int(time_limit) <= 10_000:
            raise PixioError(f"time_limit={time_limit}: use 1 to 10000 steps")
        self.task_name = name
        self.instruction = name.replace("-", " ")
        self.max_episode_steps = int(time_limit)
        if not 0 <= int(success_hold) <= 10_000:
            raise PixioError(f"success_hold={success_hold}: use 0 to 10000 steps")
        self.success_hold = int(success_hold)

        mw = ALL_V3_ENVIRONMENTS[f"{name}-v3"]()
        # Goal-observable single task whose positions come from the seeded generator (the
        # settings MetaWorld's goal-observable classes and LeRobot use).
        mw._partially_observable = False
        del mw.sawyer_observation_space  # cached with the goal hidden: steps would clip it to 0
        mw._set_task_called = True
        mw._freeze_rand_vec = False
        mw.seeded_rand_vec = True
        mw.max_path_length = self.max_episode_steps
        _add_r3m_cameras(mw)
        self.mw = mw
        self.model, self.data = mw.model, mw.data
        self.control_hz = round(1.0 / (self.model.opt.timestep * mw.frame_skip))
        self._fix_cameras()
        self.camera_names = tuple(self.model.camera(i).name for i in range(self.model.ncam))
        space = mw.sawyer_observation_space  # what MetaWorld clips its state to
        self._init_observations(
            {k: v for k, v in locals().items() if k in OBSERVATION_OPTIONS},
            (space.low[:4], space.high[:4]),
            (np.full(39, -10.0), np.full(39, 10.0)),  # MetaWorld's own bounds are partly empty
            len(ACTION_NAMES),
        )
        self.raw_obs = np.zeros(39)

    def _fix_cameras(self) -> None:
        m = self.model
        flip = np.array([0.0, 0.0, 0.0, 1.0])  # 180 degrees about the camera's own z axis
        for name in UPSIDE_DOWN_CAMERAS:
            cam = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_CAMERA, name)
            if cam >= 0:
                q = np.empty(4)
                mujoco.mju_mulQuat(q, m.cam_quat[cam], flip)
                m.cam_quat[cam] = q
        cam = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_CAMERA, "corner2")
        if cam >= 0:
            m.cam_pos[cam] = [0.75, 0.075, 0.7]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        # MetaWorld draws positions from its own generator: seed it from ours, so an unseeded
        # reset after a seeded one is still reproducible.
        self.mw.seed(int(self.np_random.integers(2**31)))
        raw, _ = self.mw.reset()
        self.raw_obs = np.asarray(raw, np.float64)
        self._steps, self._done, self._held = 0, False, 0
        return self._observation(), {"is_success": False}

    def step(self, action):
        a = self._check_step(action, len(ACTION_NAMES))
        raw, reward, _, _, info = self.mw.step(np.array(a))
        self.raw_obs = np.asarray(raw, np.float64)
        success = bool(info.get("success", 0.0))
        terminated, truncated = self._end_step(success)
        return self._observation(), float(reward), terminated, truncated, {"is_success": success}

    def _observation(self) -> dict:
        return self._observe(self.raw_obs[:4], self.raw_obs)

    def close(self):
        super().close()
        self.mw.close()

    def agent_pos(self) -> np.ndarray:
        return self.raw_obs[:4].astype(np.float32)

    @property
    def tcp(self) -> np.ndarray:
        return self.raw_obs[:3].copy()


class MetaWorldExpert:
    """MetaWorld's scripted policy for the task, on the raw state of the bound environment."""

    def __init__(self, env: MetaWorldEnv, noise: float = 0.0):
        import metaworld.policies as policies

        if noise < 0:
            raise PixioError(f"noise={noise}: give a standard deviation >= 0")
        cls_name = "Sawyer" + "".join(p.capitalize() for p in re.split(r"[-_]", env.task_name)) + "V3Policy"
        if not hasattr(policies, cls_name):
            raise PixioError(f"MetaWorld has no scripted policy for {env.task_name!r}")
        self.env, self.noise = env, float(noise)
        self.policy = getattr(policies, cls_name)()
        self.rng = np.random.default_rng()

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(None if seed is None else [seed, 7])

    def __call__(self, observation=None) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its gains trip its own "constants too high" warning
            action = np.asarray(self.policy.get_action(self.env.raw_obs), np.float64)
        self.label = np.clip(action, -1.0, 1.0).astype(np.float32)  # what is recorded (DART)
        if self.noise > 0:
            action[:3] += self.rng.normal(0.0, self.noise, 3)
        return np.clip(action, -1.0, 1.0).astype(np.float32)
