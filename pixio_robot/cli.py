"""The `pixio-robot` command line.

Subcommands are `Command` objects found through the `pixio_robot.commands` entry-point group,
so each feature package (pretrain, envs, policies, recon) adds its own commands without the
core importing it. Arguments of every subcommand take three forms, freely mixed:

    pixio-robot features imgs/ checkpoint=pixio_vitb16.pth --out feats.safetensors

`key=value` is a Hydra override, `--key value` (or `--flag` for booleans) is the same thing,
and bare arguments go to the command's positional option (here the image list).
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

from .config import compose_config, config_groups, field_help
from .errors import PixioError

GROUP = "pixio_robot.commands"


@dataclass(frozen=True)
class Command:
    """A subcommand. `run` is a function of the config, or "module:function" so that listing
    commands and checking options stay fast (torch is imported only when a command runs)."""

    name: str
    summary: str
    schema: type
    run: Callable[[typing.Any], int | None] | str
    positional: str | None = None  # option that receives bare arguments

    def __call__(self, cfg) -> int:
        run = self.run
        if isinstance(run, str):
            module, _, attr = run.partition(":")
            run = getattr(importlib.import_module(module), attr)
        return int(run(cfg) or 0)


def commands() -> dict[str, Command]:
    found = {}
    for ep in entry_points(group=GROUP):
        try:
            found[ep.name] = ep.load()
        except Exception as e:  # a broken plug-in must not take the whole CLI down
            print(f"pixio-robot: warning: command {ep.name!r} could not be loaded ({e})", file=sys.stderr)
    return dict(sorted(found.items()))


def parse_args(command: Command, argv: list[str]) -> tuple[list[str], dict]:
    """argv -> (Hydra overrides, values set directly: positionals and --key value pairs)."""
    overrides: list[str] = []
    values: dict[str, typing.Any] = {}
    bare: list[str] = []
    bools = {f.name for f in dataclasses.fields(command.schema) if f.type in (bool, "bool")}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and len(arg) > 2:
            key, eq, value = arg[2:].partition("=")
            key = key.replace("-", "_")
            if not eq:
                if key in bools and (i + 1 == len(argv) or argv[i + 1] not in ("true", "false")):
                    value = "true"
                elif i + 1 < len(argv):
                    i, value = i + 1, argv[i + 1]
                else:
                    raise PixioError(f"--{key} needs a value")
            overrides.append(f"{key}={_quote(value)}")
        elif re.match(r"^[+~]*[A-Za-z_][\w.]*=", arg):
            overrides.append(arg)
        else:
            bare.append(arg)
        i += 1
    if bare:
        if command.positional is None:
            raise PixioError(f"unexpected argument {bare[0]!r}: options are key=value (see --help)")
        field_type = {f.name: f.type for f in dataclasses.fields(command.schema)}[command.positional]
        if "list" in str(field_type).lower():
            values[command.positional] = bare
        elif len(bare) == 1:
            values[command.positional] = bare[0]
        else:
            raise PixioError(f"{command.name} takes one {command.positional}, got {len(bare)}: {' '.join(bare)}")
    return overrides, values


def _quote(value: str) -> str:
    # Hydra's override grammar treats , [ ] { } ' " = and spaces specially: quote when present,
    # except for list and dict values, which are meant to be parsed.
    if re.fullmatch(r"[\w./:@%+~-]*", value) or re.fullmatch(r"\[.*\]|\{.*\}", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def usage(command: Command) -> str:
    pos = f" [{command.positional.upper()}...]" if command.positional else ""
    lines = [f"usage: pixio-robot {command.name}{pos} [key=value ...]", "", command.summary, "", "options:"]
    presets = config_groups(command.name)
    values = None
    if presets:  # show the defaults as composed with the default preset, not the bare schema's
        try:
            values = compose_config(command.name, command.schema)
        except PixioError:
            values = None
    rows = field_help(command.schema, values)
    width = max([18] + [len(name) + 1 for name, _, _ in rows])
    for name, default, text in rows:
        lines.append(f"  {name:<{width}} {default:<22} {text}")
    if presets:
        lines += ["", f"presets ({command.name}=NAME): {', '.join(presets)}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cmds = commands()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print("usage: pixio-robot COMMAND [options]   (pixio-robot COMMAND --help for its options)\n\ncommands:")
        for c in cmds.values():
            print(f"  {c.name:<14} {c.summary}")
        return 0
    if argv[0] == "--version":
        from importlib.metadata import version

        print(f"pixio-robot {version('pixio-robot')}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in cmds:
        print(f"pixio-robot: error: unknown command {name!r}: choose one of {', '.join(cmds)}", file=sys.stderr)
        return 2
    command = cmds[name]
    if any(a in ("-h", "--help") for a in rest):
        print(usage(command))
        return 0
    try:
        overrides, values = parse_args(command, rest)
        cfg = compose_config(command.name, command.schema, overrides, values)
        return command(cfg)
    except PixioError as e:
        print(f"pixio-robot {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\npixio-robot {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
