"""The tabletop scene in MJCF: room, table, lights, cameras, the arm, and task objects.

The world origin is the centre of the table top (z up, the robot at x = -0.5 facing +x). Task
objects are added by each task as MJCF snippets; their sizes, colours and poses are changed in
the compiled model at every reset (no recompilation, so renderers stay valid).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import arm
from .cameras import mujoco_xyaxes

TABLE_TOP = 0.0
TABLE_HALF = (0.55, 0.6)  # x, y half extents
TABLE_CENTER_X = -0.15
FLOOR_Z = -0.75


@dataclass(frozen=True)
class CameraSpec:
    name: str
    pos: tuple[float, float, float]
    target: tuple[float, float, float]
    fovy: float = 45.0


# The world cameras every task has (the wrist camera rides on the hand, see arm.py).
CAMERAS = (
    CameraSpec("front", (0.62, 0.0, 0.5), (-0.06, 0.0, 0.0), 50.0),
    CameraSpec("side", (0.0, -0.78, 0.45), (-0.02, 0.0, 0.0), 50.0),
    CameraSpec("top", (0.02, 0.0, 0.95), (0.0, 0.0, 0.0), 45.0),
    CameraSpec("corner", (0.55, -0.5, 0.55), (-0.05, 0.0, 0.0), 50.0),
    CameraSpec("behind", (-0.9, 0.3, 0.7), (0.05, 0.0, 0.0), 45.0),
)
WORLD_CAMERAS = tuple(c.name for c in CAMERAS)
ALL_CAMERAS = (*WORLD_CAMERAS, "wrist")


def cube(name: str) -> str:
    """A free box; its size, mass and colour are set per episode."""
    return f"""
    <body name="{name}" pos="0 0 0.5">
      <freejoint name="{name}"/>
      <geom name="{name}" type="box" size="0.025 0.025 0.025" class="object"/>
    </body>"""


def target_marker(name: str, radius: float = 0.035, sphere: bool = False) -> str:
    """A visual-only marker (disc on the table, or a sphere in the air), moved per episode."""
    shape = f'type="sphere" size="{radius / 2}"' if sphere else f'type="cylinder" size="{radius} 0.0008"'
    return f"""
    <body name="{name}" pos="0 0 0.001">
      <geom name="{name}" {shape} contype="0" conaffinity="0" rgba="0.1 0.8 0.2 0.5" group="2"/>
    </body>"""


DRAWER_DEPTH, DRAWER_WIDTH, DRAWER_HEIGHT = 0.2, 0.26, 0.1
DRAWER_TRAVEL = 0.17
HANDLE_OFFSET = 0.055  # handle bar in front of the drawer face


def cabinet(name: str = "cabinet") -> str:
    """A cabinet whose front (local -x) faces the robot, with one drawer on a slide joint."""
    d, w, h = DRAWER_DEPTH / 2, DRAWER_WIDTH / 2, DRAWER_HEIGHT / 2
    t = 0.008  # wall thickness
    inner_w, inner_d = w - 2 * t, d - t
    return f"""
    <body name="{name}" pos="0.2 0 0">
      <geom name="{name}_top" type="box" size="{d} {w} {t}" pos="0 0 {2 * h + t}" class="furniture"/>
      <geom name="{name}_left" type="box" size="{d} {t} {h + t}" pos="0 {w - t} {h + t}" class="furniture"/>
      <geom name="{name}_right" type="box" size="{d} {t} {h + t}" pos="0 {-w + t} {h + t}" class="furniture"/>
      <geom name="{name}_back" type="box" size="{t} {w} {h + t}" pos="{d - t} 0 {h + t}" class="furniture"/>
      <body name="drawer" pos="0 0 {t}">
        <joint name="drawer" type="slide" axis="-1 0 0" range="0 {DRAWER_TRAVEL}" damping="6"
               frictionloss="0.3" armature="0.05"/>
        <geom name="drawer_front" type="box" size="{t} {inner_w} {h - 0.004}" pos="{-d + t} 0 {h}" class="drawer"/>
        <geom name="drawer_bottom" type="box" size="{inner_d} {inner_w} {t / 2}" pos="0 0 {t / 2}"
              class="drawer"/>
        <geom name="drawer_side_l" type="box" size="{inner_d} {t / 2} {h * 0.6}" pos="0 {inner_w - t / 2} {h * 0.6}"
              class="drawer"/>
        <geom name="drawer_side_r" type="box" size="{inner_d} {t / 2} {h * 0.6}"
              pos="0 {-inner_w + t / 2} {h * 0.6}" class="drawer"/>
        <geom name="handle_post_l" type="box" size="{HANDLE_OFFSET / 2} 0.006 0.006"
              pos="{-d - HANDLE_OFFSET / 2 + t} 0.055 {h}" class="handle"/>
        <geom name="handle_post_r" type="box" size="{HANDLE_OFFSET / 2} 0.006 0.006"
              pos="{-d - HANDLE_OFFSET / 2 + t} -0.055 {h}" class="handle"/>
        <geom name="handle" type="capsule" size="0.008 0.062" pos="{-d - HANDLE_OFFSET + t} 0 {h}"
              quat="0.7071 0.7071 0 0" class="handle"/>
        <site name="handle" pos="{-d - HANDLE_OFFSET + t} 0 {h}" size="0.005" group="5"/>
      </body>
    </body>"""


def build(objects: str, extra_cameras: tuple[CameraSpec, ...] = (), timestep: float = 0.002) -> str:
    """The whole MJCF document with the task's object snippets and any extra world cameras."""
    cams = "\n".join(
        f'    <camera name="{c.name}" pos="{c.pos[0]} {c.pos[1]} {c.pos[2]}" '
        f'xyaxes="{mujoco_xyaxes(c.pos, c.target)}" fovy="{c.fovy}"/>'
        for c in (*CAMERAS, *extra_cameras)
    )
    tx, (hx, hy) = TABLE_CENTER_X, TABLE_HALF
    legs = "\n".join(
        f'      <geom type="box" size="0.03 0.03 {(TABLE_TOP - 0.04 - FLOOR_Z) / 2}" '
        f'pos="{tx + sx * (hx - 0.06)} {sy * (hy - 0.06)} {(TABLE_TOP - 0.04 + FLOOR_Z) / 2}" material="table_legs"/>'
        for sx in (-1, 1)
        for sy in (-1, 1)
    )
    return f"""<mujoco model="pixio_tabletop">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{timestep}" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <visual>
    <global offwidth="640" offheight="480"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.45 0.45 0.45" specular="0.05 0.05 0.05"/>
    <map znear="0.01" zfar="50"/>
    <quality shadowsize="2048"/>
  </visual>
  <statistic center="0 0 0.1" extent="1.2"/>
  <asset>
    <texture name="sky" type="skybox" builtin="gradient" rgb1="0.75 0.82 0.9" rgb2="0.35 0.4 0.48"
             width="64" height="64"/>
    <texture name="floor" type="2d" builtin="checker" rgb1="0.42 0.42 0.45" rgb2="0.36 0.36 0.39"
             width="256" height="256"/>
    <material name="floor" texture="floor" texrepeat="16 16" texuniform="false"/>
    <material name="table" rgba="0.62 0.5 0.38 1" specular="0.1"/>
    <material name="table_legs" rgba="0.3 0.3 0.32 1"/>
  </asset>
  <default>
    <default class="object">
      <geom contype="1" conaffinity="1" condim="4" friction="1.0 0.01 0.001" priority="0" rgba="0.8 0.2 0.2 1"/>
    </default>
    <default class="furniture">
      <geom contype="1" conaffinity="1" rgba="0.55 0.55 0.6 1"/>
    </default>
    <!-- the drawer rides on its joint: it collides with the finger pads only (bit 2) -->
    <default class="drawer">
      <geom contype="4" conaffinity="2" rgba="0.75 0.7 0.6 1" mass="0.1"/>
    </default>
    <default class="handle">
      <geom contype="4" conaffinity="2" condim="4" friction="1.0 0.01 0.001" rgba="0.2 0.2 0.22 1" mass="0.02"/>
    </default>
{arm.DEFAULTS}
  </default>
  <worldbody>
    <light name="key" pos="0.4 -0.5 2.0" dir="-0.2 0.25 -1" directional="true" diffuse="0.55 0.55 0.55"
           specular="0.1 0.1 0.1" castshadow="true"/>
    <!-- a box, not an infinite plane: MuJoCo draws planes as a fine grid, 2x slower on CPU -->
    <geom name="floor" type="box" size="4 4 0.05" pos="0 0 {FLOOR_Z - 0.05}" material="floor"/>
{cams}
    <body name="table" pos="0 0 0">
      <geom name="table_top" type="box" size="{hx} {hy} 0.02" pos="{tx} 0 {TABLE_TOP - 0.02}" material="table"
            contype="1" conaffinity="1" friction="0.8 0.01 0.001"/>
{legs}
    </body>
{arm.mjcf()}
{objects}
  </worldbody>
  <actuator>
{arm.ACTUATORS}
  </actuator>
  <equality>
{arm.EQUALITY}
  </equality>
</mujoco>
"""
