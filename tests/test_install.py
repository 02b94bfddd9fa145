"""The package as a user installs it: a wheel built from the repository, in a fresh virtual
environment, used from a folder that is not the repository (so `configs/` and the bundled
weights must travel inside the wheel)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _uv() -> str:
    uv = os.environ.get("UV") or shutil.which("uv")  # `uv run` names itself in $UV
    if uv is None:
        pytest.skip("uv is not on this machine")
    return uv


def _run(cmd: list, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_built_wheel_runs_pretrain_and_features_from_another_folder(tmp_path):
    uv = _uv()
    _run([uv, "build", "--wheel", "-q", "-o", tmp_path / "dist"], ROOT)
    wheel = next((tmp_path / "dist").glob("pixio_robot-*.whl"))
    # the locked dependencies, not the project itself (it comes from the wheel)
    req = tmp_path / "requirements.txt"
    _run([uv, "export", "--frozen", "--no-dev", "--no-emit-project", "--no-hashes", "-q", "-o", req], ROOT)
    venv = tmp_path / "venv"
    python = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    _run([uv, "venv", "-q", venv, "--python", python], tmp_path)
    _run([uv, "pip", "install", "-q", "--python", venv / "bin" / "python", "-r", req, wheel], tmp_path)

    work = tmp_path / "elsewhere"
    (work / "imgs").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(work / "imgs" / f"{i}.png")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "UV_PROJECT_ENVIRONMENT")}
    cli = venv / "bin" / "pixio-robot"

    out = _run([cli, "features", "imgs", "checkpoint=sim_vitn16", "out=feats.safetensors"], work, env)
    assert "wrote feats.safetensors" in out.stdout
    _run(
        [
            cli,
            "pretrain",
            "pretrain=vitn16_64",
            "data.sources=[imgs]",
            "schedule.steps=2",
            "schedule.warmup_steps=1",
            "batch_size=4",
            "run.checkpoint_every=2",
            "run.dir=run",
        ],
        work,
        env,
    )
    assert (work / "run" / "encoder.safetensors").is_file()
    # what it ran was the wheel, not this checkout
    where = _run([venv / "bin" / "python", "-c", "import pixio_robot; print(pixio_robot.__file__)"], work, env)
    assert str(venv) in where.stdout
