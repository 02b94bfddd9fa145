"""One source of defaults: what a command runs with no options is its schema's defaults, so
the Python API (`PretrainConfig()`, `train_policy(...)`) and the CLI agree."""

from __future__ import annotations

import dataclasses

import pytest

from pixio_robot.cli import commands
from pixio_robot.config import compose_config, to_dict

COMMANDS = commands()


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_cli_defaults_are_the_schema_defaults(name):
    schema = COMMANDS[name].schema
    required = {f.name: "x" for f in dataclasses.fields(schema) if f.default == "???"}
    composed = to_dict(compose_config(name, schema, values=required))
    plain = to_dict(schema(**required))
    # train-policy's head is a config group whose default choice (cortexbench) the schema leaves
    # to the group: `head=None` means that choice in the Python API too
    if name == "train-policy":
        assert composed.pop("head")["name"] == "cortexbench" and plain.pop("head") is None
    differ = {k: (plain[k], composed[k]) for k in plain if plain[k] != composed[k]}
    assert not differ, differ


def test_head_presets_hold_no_values_of_their_own():
    from pixio_robot.config import CONFIG_DIR
    from policies.heads import HEAD_CONFIGS

    for name, schema in HEAD_CONFIGS.items():
        values = {"dataset": "x", "encoder": "x", "out": "x"}
        cfg = compose_config("train-policy", COMMANDS["train-policy"].schema, [f"head={name}"], values)
        assert cfg.head == dataclasses.asdict(schema()) or cfg.head == schema(), name
        assert "_schema" in (CONFIG_DIR / "head" / f"{name}.yaml").read_text()
