"""Hydra's application features on every command: `--cfg job` and `-m` sweeps."""

from __future__ import annotations

import json

import numpy as np
import yaml
from PIL import Image

from pixio_robot.cli import main


def _images(folder, n=8):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_cfg_job_prints_the_composed_config_and_runs_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["pretrain", "pretrain=vitn16_64", f"run.dir={run}", "model.mask_ratio=0.5", "--cfg", "job"]
    assert main(args) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["mask_ratio"] == 0.5 and cfg["model"]["decoder_depth"] == 2 and cfg["run"]["dir"] == str(run)
    assert not run.exists()


def _pretrain(images, sweep, *extra):
    return [
        "pretrain",
        "pretrain=vitn16_64",
        f"data.sources=[{images}]",
        "schedule.steps=2",
        "schedule.warmup_steps=1",
        "batch_size=4",
        "run.progress=false",
        f"run.dir={sweep}",
        *extra,
    ]


def test_a_2x2_sweep_through_submitit_runs_four_runs_into_their_own_folders(tmp_path, capsys):
    """Hydra's submitit launcher (the SLURM one's local twin): four processes, four runs."""
    images = _images(tmp_path / "imgs")
    sweep = tmp_path / "sweep"
    args = _pretrain(images, sweep, "-m", "run.seed=1,2", "model.mask_ratio=0.5,0.75", "hydra/launcher=submitit_local")
    assert main(args) == 0
    runs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert runs == sorted(f"model.mask_ratio={r},run.seed={s}" for s in (1, 2) for r in (0.5, 0.75))
    for name in runs:  # finished, each with its own options
        config = json.loads((sweep / name / "config.json").read_text())
        assert (sweep / name / "encoder.safetensors").is_file()
        assert f"model.mask_ratio={config['model']['mask_ratio']},run.seed={config['run']['seed']}" == name
    assert "sweep of 4 run(s)" in capsys.readouterr().out


def test_the_default_launcher_runs_a_sweep_in_this_process(tmp_path):
    images = _images(tmp_path / "imgs")
    sweep = tmp_path / "sweep"
    assert main(_pretrain(images, sweep, "schedule.steps=1", "-m", "run.seed=1,2")) == 0
    assert all((sweep / f"run.seed={s}" / "encoder.safetensors").is_file() for s in (1, 2))


def test_a_sweep_with_a_mistyped_value_is_refused_before_any_run(tmp_path, capsys):
    images = _images(tmp_path / "imgs")
    sweep = tmp_path / "sweep"
    args = ["pretrain", "pretrain=vitn16_64", f"data.sources=[{images}]", f"run.dir={sweep}"]
    assert main([*args, "-m", "model.mask_ratio=0.5,lots"]) == 2
    err = capsys.readouterr().err
    assert "mask_ratio" in err and err.count("\n") == 1, err
    assert not sweep.exists()
