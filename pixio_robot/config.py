"""Hydra configs: a dataclass schema per command, YAML files under `configs/`.

Each command's options are a dataclass (the schema, with the defaults and a `help` string per
field). `configs/<name>.yaml`, when present, starts from that schema (`defaults:
[<name>_schema, _self_]`) and may set other defaults or pull in config groups such as
`configs/pretrain/vits16.yaml`. Overrides use Hydra's `key=value` syntax.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, TypeVar

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import PixioError

# The repository's `configs/` in a checkout; an installed wheel carries the same folder inside
# the package (pyproject's force-include), so commands work from any folder.
_PACKAGED = Path(__file__).resolve().parent / "configs"
CONFIG_DIR = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parent.parent / "configs"

T = TypeVar("T")


def compose_config(name: str, schema: type[T], overrides: list[str] | None = None, values: dict | None = None) -> T:
    """The config `name` (YAML or bare schema) with Hydra overrides and then `values` applied,
    validated against `schema` and returned as a `schema` instance."""
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            cfg = compose(config_name=config_name(name, schema), overrides=list(overrides or []))
        for key, value in (values or {}).items():
            OmegaConf.update(cfg, key, value, merge=False)
        return OmegaConf.to_object(cfg)
    except (HydraException, OmegaConfBaseException) as e:
        raise PixioError(_one_line(e)) from e


def config_name(name: str, schema: type) -> str:
    """Hydra's name of a command's config: its YAML, or the bare schema (registered here)."""
    ConfigStore.instance().store(name=f"{name}_schema", node=schema)
    return name if (CONFIG_DIR / f"{name}.yaml").exists() else f"{name}_schema"


def to_dict(cfg: Any) -> dict:
    """A config instance as plain JSON-able data (saved next to checkpoints and results)."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return dataclasses.asdict(cfg)


def field_help(schema: type, values: Any = None, prefix: str = "") -> list[tuple[str, str, str]]:
    """(name, default, help) for each option of a schema, for `--help`. Nested dataclass
    options are listed field by field (`model.encoder`); `values` (an instance of the schema,
    e.g. the composed config) replaces the schema's own defaults."""
    rows = []
    for f in dataclasses.fields(schema):
        if values is not None:
            default = getattr(values, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            rows += field_help(type(default), default, f"{prefix}{f.name}.")
            continue
        rows.append((prefix + f.name, "(required)" if default == "???" else repr(default), f.metadata.get("help", "")))
    return rows


def config_groups(name: str) -> list[str]:
    """The options of the config group `configs/<name>/` (presets such as pretrain=vith16)."""
    folder = CONFIG_DIR / name
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _one_line(e: Exception) -> str:
    text = " ".join(str(e).split())
    if e.__cause__ is not None and "Error merging override" in text:
        override = text.removeprefix("Error merging override ").strip()
        text = f"{override}: " + " ".join(str(e.__cause__).split())
    if m := re.search(r"missing mandatory value: ?(\S+)", text):
        return f"option {m.group(1)} is required: pass {m.group(1)}=..."
    if m := re.search(r"Could not find '([^'/]+)/([^']+)' Available options in '[^']+': (.*?) Config search", text):
        choices = [c for c in m.group(3).split() if not c.endswith("_schema")]  # the schemas are not presets
        return f"unknown {m.group(1)}={m.group(2)}: choose one of {', '.join(choices)}"
    if m := re.search(r"Could not override '([^']+)'", text):
        return f"unknown option {m.group(1)!r}: see --help for the options"
    if m := re.search(r"Key '([^']+)' not in '?\w+'?", text):
        return f"unknown option {m.group(1)!r}: see --help for the options"
    return re.split(r" ?full_key:| ?Full key:", text)[0].strip()
