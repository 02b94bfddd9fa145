"""The robot: a 5-joint arm with a parallel gripper, and its closed-form inverse kinematics.

Joints: pan (z), shoulder (y), elbow (y), wrist pitch (y), wrist roll (about the hand axis),
then two fingers on slide joints coupled by an equality constraint. The gripper always points
straight down, so a tool pose is (x, y, z, yaw) and inverse kinematics is exact: pan faces the
wrist, a two-link solution (elbow up) places the wrist above the tool point, the wrist pitch
keeps the hand vertical and the roll sets the yaw. Yaw 0 means the fingers close along world x.

The arm tracks its joint targets with position servos (gravity compensated), so contacts see
bounded forces; only the finger pads collide, the links are visual.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .cameras import mujoco_xyaxes

BASE = np.array([-0.5, 0.0, 0.0])  # on the table top
SHOULDER_HEIGHT = 0.2
UPPER_ARM = 0.5
FOREARM = 0.45
HAND = 0.145  # wrist axis to the tool centre point (between the finger pads)
FINGER_TRAVEL = 0.04  # each finger, from closed (0) to fully open
ARM_JOINTS = ("pan", "shoulder", "elbow", "wrist_pitch", "wrist_roll")
HOME = np.array([-0.1, 0.0, 0.25, 0.0])  # x, y, z, yaw of the tool at reset


@dataclass(frozen=True)
class Workspace:
    """Box the tool centre point is kept in, and the yaw range."""

    low: tuple[float, float, float, float] = (-0.3, -0.35, 0.02, -math.pi / 2)
    high: tuple[float, float, float, float] = (0.32, 0.35, 0.42, math.pi / 2)

    def clip(self, pose: np.ndarray) -> np.ndarray:
        return np.clip(pose, self.low, self.high)


def inverse_kinematics(pose) -> tuple[float, float, float, float, float]:
    """Tool pose (x, y, z, yaw) in the world -> the five arm joint angles."""
    x, y, z, yaw = pose.tolist() if isinstance(pose, np.ndarray) else pose
    bx, by, bz = _BASE  # plain floats: numpy scalars would make this 3x slower
    wx, wy, wz = x - bx, y - by, z + HAND - bz
    pan = math.atan2(wy, wx)
    r, h = math.hypot(wx, wy), wz - SHOULDER_HEIGHT
    # Out of reach: aim along the same line at the longest reachable distance.
    dist = math.hypot(r, h)
    max_reach = UPPER_ARM + FOREARM - 1e-4
    if dist > max_reach:
        r, h = r * max_reach / dist, h * max_reach / dist
    cos_elbow = (r * r + h * h - UPPER_ARM**2 - FOREARM**2) / (2 * UPPER_ARM * FOREARM)
    elbow = math.acos(max(-1.0, min(1.0, cos_elbow)))
    shoulder = math.atan2(r, h) - math.atan2(FOREARM * math.sin(elbow), UPPER_ARM + FOREARM * math.cos(elbow))
    wrist_pitch = math.pi - shoulder - elbow
    roll = pan - yaw
    return pan, shoulder, elbow, wrist_pitch, roll


_BASE = tuple(float(v) for v in BASE)


def finger_target(command: float) -> float:
    """Gripper command in [-1, 1] (-1 open, +1 closed) -> each finger's slide target (metres)."""
    return FINGER_TRAVEL * (1.0 - float(command)) / 2


def mjcf(wrist_camera_fovy: float = 75.0) -> str:
    """The arm as an MJCF <body> tree to insert in the world body."""
    pad = "0.006 0.015 0.025"  # finger pad half sizes: thickness (closing axis), width, length
    cam_pos = np.array([0.0, 0.1, 0.02])
    cam_axes = mujoco_xyaxes(cam_pos, np.array([0.0, 0.0, HAND + 0.1]), up=(0.0, 1.0, 0.0))
    return f"""
    <body name="robot_base" pos="{BASE[0]} {BASE[1]} {BASE[2]}">
      <geom class="link" type="cylinder" size="0.09 0.03" pos="0 0 0.03" rgba="0.25 0.25 0.28 1"/>
      <body name="turret" pos="0 0 0.06" gravcomp="1">
        <joint name="pan" axis="0 0 1" range="-2.6 2.6" class="big"/>
        <geom class="link" type="cylinder" size="0.06 {(SHOULDER_HEIGHT - 0.06) / 2}"
              pos="0 0 {(SHOULDER_HEIGHT - 0.06) / 2}" mass="2"/>
        <body name="upper_arm" pos="0 0 {SHOULDER_HEIGHT - 0.06}" gravcomp="1">
          <joint name="shoulder" axis="0 1 0" range="-1.4 2.4" class="big"/>
          <geom class="link" type="cylinder" size="0.055 0.045" quat="0.7071 0.7071 0 0" rgba="0.25 0.25 0.28 1"/>
          <geom class="link" type="capsule" fromto="0 0 0 0 0 {UPPER_ARM}" size="0.04" mass="1.5"/>
          <body name="forearm" pos="0 0 {UPPER_ARM}" gravcomp="1">
            <joint name="elbow" axis="0 1 0" range="-0.2 3.0" class="big"/>
            <geom class="link" type="cylinder" size="0.048 0.04" quat="0.7071 0.7071 0 0" rgba="0.25 0.25 0.28 1"/>
            <geom class="link" type="capsule" fromto="0 0 0 0 0 {FOREARM}" size="0.033" mass="1.0"/>
            <body name="wrist" pos="0 0 {FOREARM}" gravcomp="1">
              <joint name="wrist_pitch" axis="0 1 0" range="-3.2 3.2" class="small"/>
              <geom class="link" type="cylinder" size="0.035 0.032" quat="0.7071 0.7071 0 0" rgba="0.25 0.25 0.28 1"/>
              <body name="hand" pos="0 0 0" gravcomp="1">
                <joint name="wrist_roll" axis="0 0 1" range="-3.8 3.8" class="small"/>
                <geom class="link" type="cylinder" size="0.03 0.03" pos="0 0 0.03" mass="0.3"/>
                <geom class="link" type="box" size="0.06 0.02 0.012" pos="0 0 0.075" mass="0.3"
                      rgba="0.25 0.25 0.28 1"/>
                <site name="tcp" pos="0 0 {HAND}" size="0.005" rgba="1 0 0 0" group="5"/>
                <camera name="wrist" pos="{cam_pos[0]} {cam_pos[1]} {cam_pos[2]}" xyaxes="{cam_axes}"
                        fovy="{wrist_camera_fovy}"/>
                <body name="finger_left" pos="0 0 {HAND}" gravcomp="1">
                  <joint name="finger_left" type="slide" axis="1 0 0" range="0 {FINGER_TRAVEL}" class="finger"/>
                  <geom class="link" type="box" size="0.006 0.012 0.04" pos="0.006 0 -0.035" mass="0.03"/>
                  <geom name="pad_left" class="pad" type="box" size="{pad}" pos="0.006 0 0"/>
                </body>
                <body name="finger_right" pos="0 0 {HAND}" gravcomp="1">
                  <joint name="finger_right" type="slide" axis="-1 0 0" range="0 {FINGER_TRAVEL}" class="finger"/>
                  <geom class="link" type="box" size="0.006 0.012 0.04" pos="-0.006 0 -0.035" mass="0.03"/>
                  <geom name="pad_right" class="pad" type="box" size="{pad}" pos="-0.006 0 0"/>
                </body>
              </body>
            </body>
          </body>
        </body>
      </body>
    </body>"""


DEFAULTS = """
    <default class="link">
      <geom contype="0" conaffinity="0" rgba="0.92 0.55 0.2 1" group="1"/>
    </default>
    <default class="pad">
      <geom contype="2" conaffinity="1" condim="4" friction="1.5 0.02 0.002" solref="0.01 1"
            mass="0.02" rgba="0.15 0.15 0.15 1" priority="1"/>
    </default>
    <default class="big">
      <joint damping="60" armature="0.1"/>
    </default>
    <default class="small">
      <joint damping="8" armature="0.03"/>
    </default>
    <default class="finger">
      <joint damping="4" armature="0.01"/>
    </default>"""

ACTUATORS = """
    <position name="pan" joint="pan" kp="1500" forcerange="-150 150"/>
    <position name="shoulder" joint="shoulder" kp="1500" forcerange="-150 150"/>
    <position name="elbow" joint="elbow" kp="1200" forcerange="-150 150"/>
    <position name="wrist_pitch" joint="wrist_pitch" kp="300" forcerange="-40 40"/>
    <position name="wrist_roll" joint="wrist_roll" kp="150" forcerange="-20 20"/>
    <position name="gripper" joint="finger_left" kp="400" forcerange="-12 12" ctrlrange="0 0.04"/>"""

EQUALITY = """
    <joint joint1="finger_right" joint2="finger_left" polycoef="0 1 0 0 0" solref="0.005 1"/>"""
