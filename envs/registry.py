"""Environment ids, their gymnasium registration, and `EnvSpec`: an environment as data.

Ids: `pixio_robot/Reach-v0`, `Push-v0`, `PickPlace-v0`, `Stack-v0`, `DrawerOpen-v0` (own
tasks) and `pixio_robot/MetaWorld-v3` (any MetaWorld v3 task, `task=` option). Short names
work everywhere a name is taken: `pick_place`, `PickPlace`, `metaworld/assembly`.

An `EnvSpec` is an id plus its complete options (defaults filled in), JSON-able: it is stored
with every dataset and capture, so a later package can rebuild the same environment
(`spec.make()`) and refuse a policy trained for another one (`spec.check_compatible`).
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from pixio_robot.errors import PixioError

NAMESPACE = "pixio_robot"
OWN_TASKS = {  # short name -> (id, entry point)
    "reach": ("pixio_robot/Reach-v0", "envs.tasks:Reach"),
    "push": ("pixio_robot/Push-v0", "envs.tasks:Push"),
    "pick_place": ("pixio_robot/PickPlace-v0", "envs.tasks:PickPlace"),
    "stack": ("pixio_robot/Stack-v0", "envs.tasks:Stack"),
    "drawer_open": ("pixio_robot/DrawerOpen-v0", "envs.tasks:DrawerOpen"),
}
METAWORLD_ID = "pixio_robot/MetaWorld-v3"
METAWORLD_ENTRY = "envs.metaworld_env:MetaWorldEnv"
ENV_IDS = (*(i for i, _ in OWN_TASKS.values()), METAWORLD_ID)
# Options that change what a policy sees or does: they must match between training and use.
INTERFACE_KEYS = ("task", "cameras", "image_size", "control_hz", "environment_state", "depth", "segmentation")


def register() -> None:
    """Register every id with gymnasium (idempotent; importing `envs` does it)."""
    for env_id, entry in (*OWN_TASKS.values(), (METAWORLD_ID, METAWORLD_ENTRY)):
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=entry, disable_env_checker=False)


def _entry_class(env_id: str) -> type:
    import importlib

    entry = dict(OWN_TASKS.values()).get(env_id) or METAWORLD_ENTRY
    module, _, name = entry.partition(":")
    return getattr(importlib.import_module(module), name)


def resolve(name: str) -> tuple[str, dict]:
    """A short name or id -> (gymnasium id, options implied by the name)."""
    key = name.strip()
    if key.lower().startswith(("metaworld/", "mw/")):
        return METAWORLD_ID, {"task": key.split("/", 1)[1]}
    if key in ENV_IDS:
        return key, {}
    canon = key.removeprefix(f"{NAMESPACE}/").rsplit("-v", 1)[0]
    canon = "".join(f"_{c.lower()}" if c.isupper() else c for c in canon).lstrip("_").replace("-", "_")
    if canon in OWN_TASKS:
        return OWN_TASKS[canon][0], {}
    if canon == "meta_world":
        return METAWORLD_ID, {}
    choices = [*OWN_TASKS, "metaworld/<task>"]
    raise PixioError(f"unknown environment {name!r}: choose from {', '.join(choices)}")


def _plain(value: Any) -> Any:
    """Hydra/OmegaConf containers and tuples -> JSON types."""
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


@dataclass(frozen=True)
class EnvSpec:
    id: str
    kwargs: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, name: str, **options) -> EnvSpec:
        """`EnvSpec.parse("pick_place", cameras=["front", "wrist"])`: id resolved, unknown
        options refused, every other option at its default. `cameras=None` (or []) means no
        cameras: observations without images."""
        env_id, implied = resolve(name)
        params = inspect.signature(_entry_class(env_id).__init__).parameters
        options = {**implied, **options}
        unknown = sorted(set(options) - set(params) - {"self"})
        if unknown:
            allowed = [p for p in params if p not in ("self", "render_mode")]
            raise PixioError(f"unknown option {unknown[0]!r} for {env_id}: options are {', '.join(allowed)}")
        if env_id == METAWORLD_ID and "task" in options:  # refused here, before any command writes a file
            from .metaworld_env import metaworld_tasks

            tasks = metaworld_tasks()
            if str(options["task"]).removesuffix("-v3") not in tasks:
                raise PixioError(f"unknown MetaWorld task {options['task']!r}: choose from {', '.join(tasks)}")
        kwargs = {
            k: _plain(options.get(k, p.default))
            for k, p in params.items()
            if k not in ("self", "render_mode") and p.default is not inspect.Parameter.empty
        }
        return cls(env_id, kwargs)

    @classmethod
    def from_dict(cls, d: dict) -> EnvSpec:
        try:
            return cls(str(d["id"]), dict(d.get("kwargs", {})))
        except (KeyError, TypeError) as e:
            raise PixioError(f"not an environment description (needs 'id' and 'kwargs'): {e}") from None

    def to_dict(self) -> dict:
        return {"id": self.id, "kwargs": json.loads(json.dumps(self.kwargs))}

    @property
    def name(self) -> str:
        """Short name: `pick_place`, `metaworld/assembly`."""
        if self.id == METAWORLD_ID:
            return f"metaworld/{self.kwargs.get('task', '')}"
        return next((k for k, (i, _) in OWN_TASKS.items() if i == self.id), self.id)

    @property
    def state_names(self) -> tuple[str, ...]:
        """What `agent_pos` (a dataset's `observation.state`) holds in this version."""
        return tuple(_entry_class(self.id).state_names)

    def replace(self, **kwargs) -> EnvSpec:
        return EnvSpec(self.id, {**self.kwargs, **{k: _plain(v) for k, v in kwargs.items()}})

    def make(self, **overrides) -> gym.Env:
        """The environment (through `gymnasium.make`, so `env.spec` is set)."""
        register()
        return gym.make(self.id, **{**self.kwargs, **overrides})

    def interface(self) -> dict:
        """The options a policy depends on, with camera sizes resolved: {camera: [h, w]}."""
        kw = self.kwargs
        cams = kw.get("cameras") or []
        size = kw.get("image_size", 128)
        pair = [size, size] if isinstance(size, int) else list(size)
        if isinstance(cams, str):
            cams = [cams]
        sizes = (
            {c: (pair if s is None else [s, s] if isinstance(s, int) else list(s)) for c, s in cams.items()}
            if isinstance(cams, dict)
            else {c: pair for c in cams}
        )
        out = {"id": self.id, "cameras": sizes}
        out.update({k: kw[k] for k in INTERFACE_KEYS if k in kw and k not in ("cameras", "image_size")})
        return out

    def check_compatible(self, other: EnvSpec, what: str = "the policy") -> None:
        """Raise `PixioError` naming the first option where `other` (what `what` was trained on)
        differs from this environment in a way the policy would notice."""
        mine, theirs = self.interface(), other.interface()
        for key in sorted(set(mine) | set(theirs)):
            if mine.get(key) != theirs.get(key):
                raise PixioError(
                    f"{what} was made for {other.name} with {key}={theirs.get(key)!r}, "
                    f"but this environment ({self.name}) has {key}={mine.get(key)!r}"
                )


def make_env(name: str, **options) -> gym.Env:
    """`make_env("pick_place", cameras=["front", "wrist"], image_size=96)`."""
    return EnvSpec.parse(name, **options).make()
