"""DistributedDataParallel through torchrun (Gloo, CPU): two ranks with half the batch each
make the same update as one process with the whole batch (and as gradient accumulation)."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from test_pretrain_data import _keep_threads, make_images, run_args  # noqa: F401 (fixture)

from pixio_robot.cli import main
from pixio_robot.harness import load_checkpoint
from pretrain.configuration_pixio import ModelConfig
from pretrain.modeling_pixio import PixioPretrainModel


def test_two_ranks_with_half_the_batch_match_one_process_with_all_of_it(tmp_path):
    images = make_images(tmp_path / "images", n=16)
    options = ["batch_size=8", "run.checkpoint_every=2", "optim.base_lr=0.05"]  # large steps: a visible update
    two = run_args(images, tmp_path / "two_ranks", 2, *options)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pretrain"]
    proc = subprocess.run([*cmd, *two[1:]], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 ranks x 1 accumulation x 4" in proc.stdout
    assert main(run_args(images, tmp_path / "one", 2, *options)) == 0
    assert main(run_args(images, tmp_path / "accumulated", 2, *options, "accum_steps=2")) == 0

    ckpts = {d: load_checkpoint(tmp_path / d) for d in ("one", "two_ranks", "accumulated")}
    one, ranks, accum = (ckpts[d]["model"] for d in ("one", "two_ranks", "accumulated"))
    torch.manual_seed(0)  # run.seed: the weights every run starts from
    init = PixioPretrainModel(ModelConfig(**json.loads(ckpts["one"]["config"])["model"])).state_dict()
    moved = 0.0
    for k, v in one.items():
        assert torch.allclose(ranks[k], v, atol=1e-5, rtol=0), k
        assert torch.allclose(accum[k], v, atol=1e-5, rtol=0), k
        moved = max(moved, (v - init[k]).abs().max().item())
    assert moved > 1e-3  # the update is a hundred times the tolerance
    assert (tmp_path / "two_ranks" / "encoder.safetensors").exists()
    assert not list((tmp_path / "two_ranks").glob("**/.tmp-*"))
