"""End-to-end runs of the small config in-process: the loss falls, the exported encoder is
the trained one, reconstruction view, curation, distillation, non-finite loss, resume rules."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_pretrain_data import _keep_threads, make_images, run_args  # noqa: F401 (fixture)

from pixio_robot import load_encoder, save_encoder
from pixio_robot.cli import main
from pixio_robot.harness import list_checkpoints, load_checkpoint
from pixio_robot.viz import rrd_entities
from pretrain.checkpointing import load_trained
from pretrain.modeling_pixio import PixioPretrainModel


def losses(run_dir) -> list[float]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """30 steps of the 64px preset on generated images (about 5 s)."""
    root = tmp_path_factory.mktemp("train")
    images = make_images(root / "images")
    run = root / "run"
    n = torch.get_num_threads()
    assert main(run_args(images, run, 30, "run.log_every=5")) == 0
    torch.set_num_threads(n)
    return images, run


def test_loss_falls_and_the_exported_encoder_is_the_trained_one(trained):
    images, run = trained
    curve = losses(run)
    assert len(curve) == 6 and curve[-1] < curve[0] - 0.05, curve
    assert {p.name for p in run.iterdir()} >= {"config.json", "metrics.csv", "metrics.rrd", "encoder.safetensors"}
    assert "/metrics/loss" in rrd_entities(run / "metrics.rrd")
    exported = load_encoder(run / "encoder.safetensors")
    ckpt, model = load_trained(run)
    assert ckpt["step"] == 30
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(exported(x), model.encoder(x))
        assert torch.equal(exported.global_embedding(x), model.encoder.global_embedding(x))
    # pretrain-export writes the same encoder from the checkpoint
    out = run.parent / "exported.safetensors"
    assert main(["pretrain-export", str(run / "checkpoints" / "step-00000030.pt"), f"out={out}"]) == 0
    again = load_encoder(out)
    assert all(
        torch.equal(a, b) for a, b in zip(again.state_dict().values(), exported.state_dict().values(), strict=True)
    )


def test_checkpoint_holds_the_whole_training_state_and_loads_without_pickle(trained):
    _, run = trained
    (step, path), *_ = list_checkpoints(run)[-1:]
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert step == 30 and ckpt["step"] == 30 and ckpt["kind"] == "pretrain"
    assert set(ckpt) >= {"model", "optimizer", "guard", "data", "rng", "config", "encoder"}
    assert ckpt["step"] == 30 and len(ckpt["optimizer"]["state"]) > 0
    assert len(list_checkpoints(run)) <= 3  # keep_checkpoints


def test_reconstruction_view_writes_png_and_recording(trained, tmp_path):
    images, run = trained
    out = tmp_path / "recon.png"
    assert main(["pretrain-view", str(images), f"checkpoint={run}", f"out={out}", "n=3"]) == 0
    grid = np.asarray(Image.open(out))
    assert grid.shape[1] > 4 * 64 and grid.shape[0] > 3 * 64  # 4 panels x 3 images
    entities = rrd_entities(tmp_path / "recon.rrd")
    assert {f"/reconstruction/2/{k}" for k in ("input", "visible", "prediction", "target")} <= entities
    assert main(["pretrain-view", str(images), f"checkpoint={run}", f"out={out}"]) == 2  # exists


def test_curate_then_train_on_the_curated_data(trained, tmp_path):
    images, run = trained
    out = tmp_path / "curation.json"
    assert main(["curate", str(images), f"checkpoint={run}", f"out={out}", "batch_size=10"]) == 0
    table = json.loads(out.read_text())
    assert table["format"] == "pixio-robot/curation" and len(table["images"]) == 24
    info = next(iter(table["images"].values()))
    assert 0.1 < info["loss"] < 3 and info["color_entropy"] > 1 and info["height"] >= 72
    # the curated run accepts images with probability = loss (these losses are near 1)
    args = run_args(images, tmp_path / "run", 2, f"data.curation={out}", "data.min_color_entropy=1.0")
    assert main(args) == 0


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    images = make_images(tmp_path / "images", n=8)
    forward = PixioPretrainModel.forward
    calls = {"n": 0}

    def diverging(self, x, noise=None):
        out = forward(self, x, noise)
        calls["n"] += 1
        if calls["n"] >= 5:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(PixioPretrainModel, "forward", diverging)
    run = tmp_path / "run"
    assert main(run_args(images, run, 8, "batch_size=4", "run.checkpoint_every=2")) == 2
    err = capsys.readouterr().err
    assert (
        "loss exploded at step 5 (loss nan" in err
        and "step-00000004.pt (step 4) is kept" in err
        and err.count("\n") == 1
    )
    assert [s for s, _ in list_checkpoints(run)] == [2, 4]
    assert load_checkpoint(run)["step"] == 4 and not (run / "encoder.safetensors").exists()


def test_resume_rules(tmp_path, capsys):
    images = make_images(tmp_path / "images", n=8)
    run = tmp_path / "run"
    assert main(run_args(images, run, 2, "batch_size=4")) == 0
    assert main(run_args(images, run, 2, "batch_size=4")) == 2
    assert "already holds checkpoints: pass run.resume=true" in capsys.readouterr().err
    assert main(run_args(images, run, 2, "batch_size=8", "run.resume=true")) == 2
    assert "it was started with batch_size=4, this command has batch_size=8" in capsys.readouterr().err
    assert main(run_args(images, tmp_path / "empty", 2, "run.resume=true")) == 2
    assert "holds no checkpoint" in capsys.readouterr().err
    # whole (DDP) weights do not resume as shards, nor the other way round: one line naming the option
    assert main(run_args(images, run, 4, "batch_size=4", "run.resume=true", "run.parallel=fsdp")) == 2
    assert "was written with run.parallel=ddp (whole weights): resume with run.parallel=ddp" in capsys.readouterr().err
    assert main(run_args(images, run, 4, "batch_size=4", "run.parallel=zero3")) == 2
    assert "run.parallel='zero3': choose ddp or fsdp" in capsys.readouterr().err
    # one process with run.parallel=fsdp shards nothing but writes sharded checkpoints
    sharded = tmp_path / "sharded"
    assert main(run_args(images, sharded, 2, "batch_size=4", "run.parallel=fsdp")) == 0
    assert load_checkpoint(sharded)["sharded"] == "step-00000002.dcp" and (sharded / "encoder.safetensors").exists()
    assert main(run_args(images, sharded, 4, "batch_size=4", "run.resume=true")) == 2
    assert "run.parallel=fsdp (sharded weights): resume with run.parallel=fsdp" in capsys.readouterr().err
    # a longer schedule continues from step 2
    assert main(run_args(images, run, 4, "batch_size=4", "run.resume=true")) == 0
    assert load_checkpoint(run)["step"] == 4


def test_distillation_trains_the_student_and_exports_it(tmp_path):
    images = make_images(tmp_path / "images", n=8)
    torch.manual_seed(0)
    teacher = tmp_path / "teacher.safetensors"
    save_encoder(load_encoder("vitt16", img_size=64), teacher)
    run = tmp_path / "distill"
    args = [
        "distill",
        f"teacher={teacher}",
        "student.image_size=64",
        "student.mask_grid=2",
        f"data.sources=[{images}]",
        "data.num_workers=0",
        f"run.dir={run}",
        "schedule.steps=8",
        "schedule.warmup_steps=1",
        "batch_size=8",
        "run.log_every=2",
        "run.progress=false",
        "run.threads=1",
    ]
    assert main(args) == 0
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {"loss_cls", "loss_patch"} <= set(rows[0]) and float(rows[-1]["loss"]) < float(rows[0]["loss"]) - 0.1
    student = load_encoder(run / "encoder.safetensors")
    assert student.config["embed_dim"] == 128 and student.n_cls_tokens == 8


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtype_is_bfloat16_only_where_the_cpu_computes_it_natively(monkeypatch, native):
    # Emulated bfloat16 trained 13x slower than float32 on an AMD EPYC without AVX512-BF16/AMX.
    from pixio_robot.devices import pick_dtype

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert pick_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if native else torch.float32)
    assert pick_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16  # an explicit choice is kept
