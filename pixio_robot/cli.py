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
import itertools
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
        elif re.match(r"^[+~]*[A-Za-z_][\w./-]*=", arg):  # "-" and "/": groups such as train-policy=
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
    show = _take_cfg_flag(rest)
    multirun = any(a in ("-m", "--multirun") for a in rest)
    rest = [a for a in rest if a not in ("-m", "--multirun")]
    try:
        overrides, values = parse_args(command, rest)
        if multirun:
            return sweep(command, overrides, values, show)
        cfg = compose_config(command.name, command.schema, overrides, values)
        if show:
            print(config_yaml(cfg), end="")
            return 0
        return command(cfg)
    except PixioError as e:
        print(f"pixio-robot {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\npixio-robot {name}: interrupted", file=sys.stderr)
        return 130


def _take_cfg_flag(rest: list[str]) -> bool:
    """Hydra's `--cfg job` (also `--cfg=job`): print the composed config instead of running.
    Removes the flag from `rest`."""
    for i, a in enumerate(rest):
        if a in ("--cfg", "-c") and i + 1 < len(rest) and rest[i + 1] == "job":
            del rest[i : i + 2]
            return True
        if a == "--cfg=job":
            del rest[i]
            return True
    return False


def config_yaml(cfg) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def sweep(command: Command, overrides: list[str], values: dict, show: bool = False) -> int:
    """Hydra's `-m`: every combination of the comma-separated (or range()) values, each run in
    its own folder `<out>/<swept key=value,...>`, launched by Hydra's launcher: one after
    another here by default, or `hydra/launcher=submitit_slurm` (a SLURM cluster) or
    `submitit_local` with `hydra.launcher.*` options. Every combination is composed (options
    and types checked) before the first run starts; a run that fails is reported and the sweep
    goes on."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    own = [o for o in parsed if not o.input_line.startswith("hydra")]
    fixed = [o.input_line for o in own if not o.is_sweep_override()]
    swept = [o for o in own if o.is_sweep_override()]
    out_key = _out_key(command.schema)
    if out_key is None:
        raise PixioError(f"{command.name} writes no run folder: -m sweeps need a command with out= or run.dir=")
    base = _lookup(compose_config(command.name, command.schema, fixed, values), out_key)
    if base in (None, "???"):
        raise PixioError(f"-m: give {out_key}=FOLDER: each run of the sweep gets a subfolder of it")
    combos = list(itertools.product(*[[f"{o.key_or_group}={v}" for v in o.sweep_string_iterator()] for o in swept]))
    for combo in combos:  # all checked before anything runs
        cfg = compose_config(command.name, command.schema, [*fixed, *combo], values)
        if show:
            print(f"# {' '.join(combo)}\n{config_yaml(cfg)}", end="")
    if show:
        return 0
    print(f"pixio-robot {command.name}: sweep of {len(combos)} run(s) into {base}/", flush=True)
    not_in_names = ",".join(o.key_or_group for o in own if not o.is_sweep_override())
    hydra_options = [
        f"hydra.sweep.dir={_quote(str(base))}",
        "hydra.sweep.subdir=${hydra.job.override_dirname}",  # the swept options only:
        f"hydra.job.config.override_dirname.exclude_keys=[{not_in_names}]",
        "hydra.output_subdir=null",  # the run folders stay empty until the command writes them
        "hydra/job_logging=none",
        "hydra/hydra_logging=none",
    ]
    job = SweepJob(command.name, command.schema, values, out_key)
    returns = run_multirun(command.name, command.schema, job, [*hydra_options, *overrides])
    codes = [r.return_value for batch in returns for r in batch]
    failed = sum(code != 0 for code in codes)
    if failed:
        print(f"pixio-robot {command.name}: {failed} of {len(codes)} run(s) failed", file=sys.stderr)
        return 1
    return 0


def run_multirun(name: str, schema: type, job: Callable, overrides: list[str]) -> list:
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from .config import CONFIG_DIR, config_name

    with initialize_config_dir(config_dir=str(CONFIG_DIR), job_name=name, version_base="1.3"):
        return GlobalHydra.instance().hydra.multirun(config_name(name, schema), job, overrides)


class SweepJob:
    """One run of a sweep, as Hydra's launchers call it: the composed config, the command's
    direct values and the run's own folder. Picklable for submitit; unpickling registers the
    command's schema, which the launcher's process needs to compose the run's config."""

    def __init__(self, name: str, schema: type, values: dict, out_key: str):
        self.name, self.schema, self.values, self.out_key = name, schema, values, out_key

    def __setstate__(self, state: dict) -> None:
        from .config import config_name

        self.__dict__.update(state)
        config_name(self.name, self.schema)  # registers the schema in this process

    def __call__(self, cfg) -> int:
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf

        folder = HydraConfig.get().runtime.output_dir
        for key, value in {**self.values, self.out_key: folder}.items():
            OmegaConf.update(cfg, key, value, merge=False)
        try:
            return commands()[self.name](OmegaConf.to_object(cfg))
        except PixioError as e:
            print(f"pixio-robot {self.name}: error in {folder}: {e}", file=sys.stderr)
            return 2


def _out_key(schema: type) -> str | None:
    """The option naming a command's output folder (pre-training nests it as run.dir)."""
    names = {f.name for f in dataclasses.fields(schema)}
    return "out" if "out" in names else "run.dir" if "run" in names else None


def _lookup(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part, None)
    return cfg


if __name__ == "__main__":
    sys.exit(main())
