"""Kill and resume: a run killed with SIGKILL (once while writing a checkpoint, once between
checkpoints) and resumed ends with exactly the weights of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_pretrain_data import _keep_threads, make_images, run_args  # noqa: F401 (fixture)

from pixio_robot.cli import main
from pixio_robot.harness import checkpoint_dir, latest_checkpoint, load_checkpoint

STEPS = 12


@pytest.fixture(autouse=True)
def _not_deterministic_afterwards():
    yield
    torch.use_deterministic_algorithms(False)


def start(args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pretrain", *args[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Spin (no sleep: the window to catch a checkpoint write is a few ms) until condition()."""
    end = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before the kill: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError("timed out waiting for the run")


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL


def test_sigkill_then_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    images = make_images(tmp_path / "images", n=16)
    # a 4.6M-parameter model: 55 MB checkpoints take long enough to write to be caught mid-write
    options = [
        "batch_size=8",
        "run.checkpoint_every=4",
        "run.log_every=1",
        "run.deterministic=true",
        "model.decoder_dim=256",
        "model.decoder_depth=4",
    ]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert main(run_args(images, reference, STEPS, *options)) == 0
    args = run_args(images, killed, STEPS, *options)
    folder = checkpoint_dir(killed)

    # 1. killed while writing the step-8 checkpoint: step 4 stays the latest, readable one
    proc = start(args)
    wait_for(lambda: folder.is_dir() and any(p.name.startswith(".tmp-step-00000008") for p in folder.iterdir()), proc)
    kill(proc)
    assert any(p.name.startswith(".tmp-") for p in folder.iterdir()), "the kill missed the checkpoint write"
    assert latest_checkpoint(killed).name == "step-00000004.pt"
    assert load_checkpoint(killed)["step"] == 4

    # 2. resumed, then killed between checkpoints (after step 9 is logged, before step 12)
    proc = start([*args, "run.resume=true"])
    metrics = killed / "metrics.csv"
    wait_for(lambda: (folder / "step-00000008.pt").exists() and "\n9," in metrics.read_text(), proc)
    kill(proc)
    assert latest_checkpoint(killed).name == "step-00000008.pt"
    assert not any(p.name.startswith(".tmp-step-00000008") for p in folder.iterdir())  # cleaned on resume

    # 3. resumed to the end: the same weights and optimizer state, bit for bit
    assert main([*args, "run.resume=true"]) == 0
    a, b = load_checkpoint(reference), load_checkpoint(killed)
    assert a["step"] == b["step"] == STEPS
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for i, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], b["optimizer"]["state"][i]["exp_avg_sq"])
    # the metrics of the resumed run read as one run
    steps = [int(line.split(",")[0]) for line in metrics.read_text().splitlines()[1:]]
    assert steps == list(range(1, STEPS + 1))
