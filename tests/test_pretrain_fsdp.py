"""FSDP2 through torchrun (Gloo, CPU): the sharded run makes DDP's update, its sharded
checkpoints resume exactly (also in another number of processes), and the encoder it exports
loads with `pixio_robot.load_encoder`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from test_pretrain_data import _keep_threads, make_images, run_args  # noqa: F401 (fixture)

from pixio_robot import load_encoder
from pixio_robot.errors import PixioError
from pixio_robot.harness import Run, WarmupCosine, list_checkpoints, load_checkpoint
from pretrain.configuration_pixio import ModelConfig, OptimConfig
from pretrain.modeling_pixio import PixioPretrainModel
from pretrain.optim import make_optimizer

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pretrain"]
# float32: the comparison is of the sharding, not of bf16 rounding (auto is bf16 on some CPUs)
OPTIONS = ("batch_size=8", "optim.base_lr=0.05", "run.dtype=float32", "run.deterministic=true")


def _torchrun(args: list[str]) -> str:
    proc = subprocess.run([*TORCHRUN, *args[1:]], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two ranks: DDP for 4 steps, FSDP for 4 steps, FSDP for 2 steps then resumed to 4."""
    root = tmp_path_factory.mktemp("fsdp")
    images = make_images(root / "images", n=16)
    out = {}
    for name, extra in (("ddp", ()), ("fsdp", ("run.parallel=fsdp",))):
        out[name + "_log"] = _torchrun(run_args(images, root / name, 4, *OPTIONS, "run.checkpoint_every=2", *extra))
    resumed = run_args(images, root / "resumed", 4, *OPTIONS, "run.checkpoint_every=2", "run.parallel=fsdp")
    _torchrun([*resumed, "run.stop_after=2"])
    out["resumed_log"] = _torchrun([*resumed, "run.resume=true"])
    return root, out


def test_fsdp_makes_the_same_update_as_ddp(runs):
    root, logs = runs
    assert "2 ranks x 1 accumulation x 4" in logs["fsdp_log"] and ", fsdp" in logs["fsdp_log"]
    ddp, fsdp = load_checkpoint(root / "ddp"), load_checkpoint(root / "fsdp")
    assert "sharded" in fsdp and "sharded" not in ddp
    assert (root / "fsdp" / "checkpoints" / fsdp["sharded"]).is_dir()
    torch.manual_seed(0)  # run.seed: the weights every run starts from
    init = PixioPretrainModel(ModelConfig(**json.loads(ddp["config"])["model"])).state_dict()
    assert ddp["model"].keys() == fsdp["model"].keys() == init.keys()
    moved = 0.0
    for k, v in ddp["model"].items():
        assert torch.allclose(fsdp["model"][k], v, atol=1e-5, rtol=0), k
        moved = max(moved, (v - init[k]).abs().max().item())
    assert moved > 1e-3  # the update is a hundred times the tolerance


def test_sharded_checkpoint_resumes_exactly_and_exports_a_loadable_encoder(runs):
    root, logs = runs
    assert "resuming at step 2" in logs["resumed_log"]
    straight, resumed = load_checkpoint(root / "fsdp"), load_checkpoint(root / "resumed")
    assert straight["step"] == resumed["step"] == 4
    for k, v in straight["model"].items():
        assert torch.equal(resumed["model"][k], v), k
    # the newest two checkpoints kept, each a step file with its shard folder; no temporaries
    folder = root / "resumed" / "checkpoints"
    assert [s for s, _ in list_checkpoints(root / "resumed")] == [2, 4]
    assert sorted(p.name for p in folder.iterdir()) == [
        "step-00000002.dcp",
        "step-00000002.pt",
        "step-00000004.dcp",
        "step-00000004.pt",
    ]
    encoder = load_encoder(root / "fsdp" / "encoder.safetensors")
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, straight["model"]["encoder." + k]), k


def test_two_rank_shards_resume_in_one_process_and_whole_weights_are_refused(runs):
    root, _ = runs
    ckpt = load_checkpoint(root / "fsdp")
    config = json.loads(ckpt["config"])
    model = PixioPretrainModel(ModelConfig(**config["model"]))
    optimizer = make_optimizer(model, OptimConfig(**config["optim"]), torch.device("cpu"))

    def run(sharded: bool) -> Run:
        return Run(
            "pretrain",
            root / "fsdp",
            config,
            model,
            optimizer,
            WarmupCosine(1e-3, 0, 4),
            4,
            None,
            8,
            1,
            2,
            sharded=sharded,
        )

    assert run(sharded=True).resume(ckpt) == 4  # resharded from two ranks to one
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["model"][k]), k
    state = optimizer.state_dict()["state"]
    assert len(state) == len(list(model.parameters())) and all(int(s["step"]) == 4 for s in state.values())
    with pytest.raises(PixioError, match="sharded"):
        run(sharded=False).resume(ckpt)
