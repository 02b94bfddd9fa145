"""train-recon, eval-recon and recon end to end on scenes captured here with `envs`
(vitn16 encoder with random weights, 64x64 views, the tiny head)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import recon.train
from pixio_robot.cli import main
from pixio_robot.errors import PixioError
from pixio_robot.harness import load_checkpoint
from pixio_robot.viz import rrd_entities
from recon.configuration_recon import ReconConfig
from recon.data import load_scenes
from recon.losses import ReconLoss
from recon.modeling_recon import ReconModel
from recon.sampling import collate, fixed_view_sets
from recon.tokens import TokenCache


@pytest.fixture(scope="module")
def data(stack_scenes):
    return stack_scenes


def train_args(data, out, *extra):
    return [
        "train-recon",
        f"data=[{data / 'train'}]",
        "encoder=vitn16",
        "image_size=64",
        "recon=tiny",
        f"out={out}",
        f"cache_dir={data / 'cache'}",
        "batch_size=4",
        "warmup_steps=5",
        "lr=2e-3",
        "log_every=5",
        "threads=1",
        "progress=false",
        *extra,
    ]


@pytest.fixture(scope="module")
def trained(data):
    out = data / "run"
    assert main(train_args(data, out, "steps=60", "save_every=30")) == 0
    return out


def fixed_loss(model: ReconModel, data, run) -> float:
    """Loss on fixed 3-view sets of the training scenes, with the run's encoder."""
    import pixio_robot

    scenes = load_scenes([data / "train"], 64)
    cache = TokenCache(pixio_robot.load_encoder(run / "encoder.safetensors"), None, (64, 64))
    tokens = [cache.tokens(s) for s in scenes]
    x, tgt = collate(fixed_view_sets([4] * len(scenes), 3), tokens, scenes)
    with torch.no_grad():
        return ReconLoss(model.config)(model.eval()(x), tgt)[0].item()


def test_training_lowers_the_loss(data, trained):
    trained_model, meta = ReconModel.load(trained / "model.safetensors")
    torch.manual_seed(0)  # the run's seed: the head as it was before the first step
    initial = ReconModel(trained_model.config, 128, 16)
    before, after = fixed_loss(initial, data, trained), fixed_loss(trained_model, data, trained)
    assert after < 0.8 * before, (before, after)
    assert meta["step"] == 60 and meta["image_size"] == [64, 64] and meta["encoder"]["path"] == "encoder.safetensors"
    rows = list(csv.DictReader(open(trained / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == list(range(5, 61, 5))
    assert all(np.isfinite(float(r["loss"])) for r in rows)


def test_an_interrupted_run_resumes_to_the_same_weights(data, trained, monkeypatch):
    out = data / "interrupted"
    real_step = recon.train._Steps.__call__

    def stop_at_40(self, step):
        if step == 40:
            raise KeyboardInterrupt
        return real_step(self, step)

    monkeypatch.setattr(recon.train._Steps, "__call__", stop_at_40)
    assert main(train_args(data, out, "steps=60", "save_every=30")) == 130
    assert load_checkpoint(out)["step"] == 40  # Ctrl-C saved the finished steps
    monkeypatch.undo()
    assert main(train_args(data, out, "steps=60", "save_every=30")) == 0
    a, _ = ReconModel.load(out / "model.safetensors")
    b, _ = ReconModel.load(trained / "model.safetensors")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6), name
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == list(range(5, 61, 5))  # one run's log, no repeats
    # other settings into the same folder are refused, the run untouched
    before = (out / "model.safetensors").read_bytes()
    assert main(train_args(data, out, "steps=80", "batch_size=2")) == 2
    assert (out / "model.safetensors").read_bytes() == before


def test_loss_explosion_stops_cleanly_and_keeps_the_last_good_checkpoint(data, monkeypatch, capsys):
    out = data / "exploding"
    real_forward = ReconLoss.forward
    calls = {"n": 0}

    def explode_after_25(self, pred, tgt):
        loss, terms = real_forward(self, pred, tgt)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > 25 else loss), terms

    monkeypatch.setattr(ReconLoss, "forward", explode_after_25)
    assert main(train_args(data, out, "steps=60", "save_every=10", "explode_patience=3")) == 2
    err = capsys.readouterr().err
    assert "loss exploded at step 28" in err and "(step 20) is kept" in err and "lower lr=" in err
    _, meta = ReconModel.load(out / "model.safetensors")
    assert meta["step"] == 20
    model, _ = ReconModel.load(out / "model.safetensors")
    assert all(torch.isfinite(p).all() for p in model.state_dict().values())
    # what the message advises works: the same out= with a lower lr continues from step 20
    monkeypatch.undo()
    assert main(train_args(data, out, "steps=30", "save_every=10", "lr=1e-3")) == 0
    assert ReconModel.load(out / "model.safetensors")[1]["step"] == 30
    assert [int(r["step"]) for r in csv.DictReader(open(out / "metrics.csv"))] == [5, 10, 15, 20, 25, 30]


def test_flipped_view_sets_are_the_mirrored_scenes(data, trained):
    """Flip augmentation: tokens of the flipped images with the mirrored scene's ground truth."""
    import pixio_robot

    scenes = load_scenes([data / "train"], 64)
    cache = TokenCache(pixio_robot.load_encoder(trained / "encoder.safetensors"), None, (64, 64))
    tokens, mirrored = [cache.tokens(s) for s in scenes], [cache.tokens(s, mirrored=True) for s in scenes]
    assert torch.allclose(mirrored[0], cache.encode(scenes[0].images[:, :, ::-1].copy()))
    sets = fixed_view_sets([4] * len(scenes), 3)
    x, tgt = collate(sets, tokens, scenes)
    flips = [True, False] * (len(sets) // 2)
    xm, tgt_m = collate(sets, tokens, scenes, mirrored, flips)
    for i, ((s, idx), flipped) in enumerate(zip(sets, flips, strict=True)):
        assert torch.equal(xm[i], (mirrored if flipped else tokens)[s][torch.as_tensor(idx)])
    assert not torch.allclose(xm[0], x[0])  # the encoder is not mirror-symmetric: new inputs
    back = tgt_m.points()[0].flip(-2) * torch.tensor([-1.0, 1.0, 1.0])  # mirrored back
    assert torch.equal(tgt_m.valid[0].flip(-1), tgt.valid[0])
    assert torch.allclose(back[tgt.valid[0]], tgt.points()[0][tgt.valid[0]], atol=1e-4)
    assert torch.equal(tgt_m.points()[1], tgt.points()[1])  # not flipped: unchanged
    with pytest.raises(PixioError, match="mirrored tokens"):
        collate(sets, tokens, scenes, None, flips)


def test_fine_tuning_starts_from_the_given_head(data, trained, capsys):
    out, start = data / "finetune", trained / "model.safetensors"
    encoder = f"encoder={trained / 'encoder.safetensors'}"  # the one the head was trained on
    # one step at a negligible rate: the weights are still those of init=
    assert main(train_args(data, out, encoder, "steps=1", "lr=1e-12", f"init={start}", "flip=0.5")) == 0
    a, b = ReconModel.load(out / "model.safetensors")[0], ReconModel.load(start)[0]
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6), name
    # a head of another architecture, or a flip chance above 1: one line, no run folder
    capsys.readouterr()
    assert main(train_args(data, data / "bad_init", encoder, "steps=1", f"init={start}", "recon.dim=32")) == 2
    assert "has recon.dim=64, this run recon.dim=32" in capsys.readouterr().err
    assert main(train_args(data, data / "bad_init", "steps=1", "encoder_seed=1", f"init={start}")) == 2
    assert "trained on another encoder" in capsys.readouterr().err
    assert main(train_args(data, data / "bad_flip", "steps=1", "flip=1.5")) == 2
    assert "flip=1.5" in capsys.readouterr().err
    assert not (data / "bad_init").exists() and not (data / "bad_flip").exists()


def test_test_time_flip_averages_the_prediction_for_the_flipped_images(data, trained):
    from recon import Reconstructor
    from recon.evaluate import evaluate_checkpoint
    from recon.modeling_recon import ReconOutput

    head = trained / "model.safetensors"
    plain = evaluate_checkpoint(head, [data / "test"], [2], cache_dir=data / "cache")["2 views"]
    flip = evaluate_checkpoint(head, [data / "test"], [2], cache_dir=data / "cache", flip=True)["2 views"]
    assert np.isfinite(flip["points_rel"]) and flip["points_rel"] != plain["points_rel"]
    rgb = sorted((data / "test" / "scene_000000" / "rgb").glob("*.png"))
    rec = Reconstructor.from_checkpoint(head, flip=True)
    views, _ = rec.prepare(rgb)
    expected = ReconOutput.average(
        [rec.predict(rec.cache.encode(views)), rec.predict(rec.cache.encode(views[:, :, ::-1].copy())).mirrored()]
    )
    assert np.allclose(rec(rgb).points, expected.points(metric=True)[0].numpy(), atol=1e-5)


def test_eval_recon_reports_the_six_metrics_and_cloud_scores(data, trained, capsys):
    out = data / "eval.json"
    args = [
        "eval-recon",
        f"checkpoint={trained / 'model.safetensors'}",
        f"data=[{data / 'test'}]",
        "views=[2,4]",
        "sets_per_scene=2",
        f"cache_dir={data / 'cache'}",
        f"out={out}",
        "progress=false",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    for label in (
        "Scale rel",
        "Points rel",
        "Points tau@1.03",
        "Pose AUC@5",
        "Depth rel",
        "Depth tau@1.03",
        "Chamfer",
        "F-score@1cm",
    ):
        assert label in printed
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"2 views", "4 views"} and results["2 views"]["sets"] == 4
    for row in results.values():
        for key in (
            "scale_rel",
            "points_rel",
            "points_tau",
            "pose_auc5",
            "depth_rel",
            "depth_tau",
            "chamfer",
            "fscore",
        ):
            assert row[key] is not None and np.isfinite(row[key]), key
        assert 0 <= row["points_tau"] <= 100 and 0 <= row["pose_auc5"] <= 100 and row["chamfer"] > 0
    # 4 sets at 2 views: every metric's mean comes with its standard error over the sets
    assert results["2 views"]["stderr"]["fscore"] is not None and results["2 views"]["stderr"]["fscore"] >= 0
    assert "standard error" in printed
    # each set's own row, to pair two runs set by set: its scene and views, and the metrics averaged
    per_set = results["2 views"]["per_set"]
    assert len(per_set) == 4 and all(len(r["views"]) == 2 and Path(r["scene"]).is_dir() for r in per_set)
    assert np.mean([r["fscore"] for r in per_set]) == pytest.approx(results["2 views"]["fscore"])
    before = out.read_text()
    assert main(args) == 2  # exists: needs overwrite=true
    assert out.read_text() == before
    assert main([*args, "overwrite=true", "max_points=0"]) == 2
    assert "max_points=0: give a positive number" in capsys.readouterr().err and out.read_text() == before


def test_recon_writes_a_ply_and_a_recording(data, trained, tmp_path, capsys):
    from pixio_robot.deps import open3d

    o3d = open3d()

    from recon import Reconstructor

    rgb = sorted((data / "test" / "scene_000000" / "rgb").glob("*.png"))
    ply, rrd = tmp_path / "scene.ply", tmp_path / "scene.rrd"
    args = ["recon", *map(str, rgb), f"checkpoint={trained / 'model.safetensors'}", f"out={ply}", f"rrd={rrd}"]
    assert main([*args, "voxel=0.002"]) == 0
    cloud = o3d.io.read_point_cloud(str(ply))

    # the in-process API gives the same cloud: same count, same colours
    result = Reconstructor.from_checkpoint(trained / "model.safetensors")(rgb)
    assert result.points.shape == (4, 64, 64, 3) and result.cam2world.shape == (4, 4, 4)
    points, colors = result.cloud(conf_percentile=10.0, voxel=0.002, outliers=True)
    assert len(cloud.points) == len(points) > 100
    assert np.allclose(np.asarray(cloud.points), points, atol=1e-6)
    assert np.array_equal(np.round(np.asarray(cloud.colors) * 255).astype(np.uint8), colors)
    # without voxels every kept pixel keeps its image colour exactly
    n = result.save_ply(tmp_path / "raw.ply", conf_percentile=0.0)
    raw = o3d.io.read_point_cloud(str(tmp_path / "raw.ply"))
    assert len(raw.points) == n == result.mask.sum()
    assert np.array_equal(np.round(np.asarray(raw.colors) * 255).astype(np.uint8), result.images[result.mask])

    assert "multi-view head" not in capsys.readouterr().err
    entities = rrd_entities(rrd)
    assert "/world/points" in entities
    for i in range(4):
        for sub in ("", "/image", "/depth"):
            assert f"/world/cameras/view_{i:03d}{sub}" in entities

    # outputs are never replaced without overwrite=true
    before = ply.read_bytes()
    assert main(args) == 2
    assert ply.read_bytes() == before
    # one image works at inference, with a warning that the head is multi-view
    capsys.readouterr()
    assert (
        main(["recon", str(rgb[0]), f"checkpoint={trained / 'model.safetensors'}", f"out={tmp_path / 'one.ply'}"]) == 0
    )
    assert "one view given to a multi-view head" in capsys.readouterr().err
    assert len(o3d.io.read_point_cloud(str(tmp_path / "one.ply")).points) > 0


def test_recon_resizes_views_of_other_sizes_and_takes_known_intrinsics(data, trained, tmp_path, capsys):
    from PIL import Image

    from recon import Reconstructor

    scene = data / "test" / "scene_000001"

    def recon(*args: str) -> int:
        return main(["recon", *args, f"checkpoint={trained / 'model.safetensors'}"])

    big = tmp_path / "big.png"  # the same view at twice the size: resized back, not refused
    Image.open(scene / "rgb" / "001.png").resize((128, 128), Image.BICUBIC).save(big)
    wide = tmp_path / "wide.png"  # another aspect ratio: resized with a warning
    Image.open(scene / "rgb" / "002.png").resize((96, 64), Image.BICUBIC).save(wide)
    ply = tmp_path / "mixed.ply"
    assert recon(str(scene / "rgb" / "000.png"), str(big), str(wide), f"out={ply}", "rrd=null") == 0
    assert "aspect ratios" in capsys.readouterr().err and ply.is_file()
    strip = tmp_path / "strip.png"  # stretched more than 2x by resizing: refused, nothing written
    Image.open(scene / "rgb" / "002.png").resize((300, 64), Image.BICUBIC).save(strip)
    assert recon(str(strip), str(big), f"out={tmp_path / 's.ply'}", "rrd=null") == 2
    assert "crop it" in capsys.readouterr().err and not (tmp_path / "s.ply").exists()

    # known intrinsics (in pixels of the given images) replace the predicted rays
    K = np.load(scene / "cameras.npz")["K"]
    np.save(tmp_path / "K.npy", K)
    rgb = str(scene / "rgb")
    assert recon(rgb, f"out={tmp_path / 'k.ply'}", "rrd=null", f"intrinsics={tmp_path / 'K.npy'}") == 0
    result = Reconstructor.from_checkpoint(trained / "model.safetensors")(sorted((scene / "rgb").glob("*.png")), K)
    assert np.allclose(result.K, K, atol=1e-6)
    assert recon(rgb, f"out={tmp_path / 'x.ply'}", "rrd=a.txt") == 2
    np.save(tmp_path / "K2.npy", K[:2])  # two matrices for four images
    assert recon(rgb, f"out={tmp_path / 'x.ply'}", "rrd=null", f"intrinsics={tmp_path / 'K2.npy'}") == 2
    assert "intrinsics of shape" in capsys.readouterr().err and not (tmp_path / "x.ply").exists()


def test_a_head_finds_its_encoder_beside_it_and_refuses_another(trained, tmp_path):
    import shutil

    from pixio_robot.checkpoints import sha256_file
    from recon.backbone import resolve_encoder

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    shutil.copy(trained / "model.safetensors", bundle / "head.safetensors")
    shutil.copy(trained / "encoder.safetensors", bundle / "small.safetensors")
    sha = sha256_file(trained / "encoder.safetensors")
    # recorded at an absolute path that no longer exists: the file of that name beside the head is used
    encoder, found = resolve_encoder({"path": "/gone/small.safetensors", "sha256": sha}, bundle / "head.safetensors")
    assert found == sha and encoder.embed_dim == 128
    # under another name too: any safetensors file beside the head with the recorded hash
    (bundle / "small.safetensors").rename(bundle / "pixio_small.safetensors")
    assert resolve_encoder({"path": "/gone/small.safetensors", "sha256": sha}, bundle / "head.safetensors")[1] == sha
    with pytest.raises(PixioError, match="is missing"):
        resolve_encoder({"path": "/gone/small.safetensors", "sha256": "0" * 64}, bundle / "head.safetensors")
    (bundle / "pixio_small.safetensors").rename(bundle / "small.safetensors")
    with pytest.raises(PixioError, match="changed since the head was trained"):
        resolve_encoder({"path": str(bundle / "small.safetensors"), "sha256": "0" * 64}, bundle / "head.safetensors")


def test_a_head_trained_elsewhere_on_a_bundled_encoder_finds_the_bundled_one(tmp_path):
    """A head trained on another machine (a GPU run) records that machine's path of the bundled
    encoder; here the recorded SHA-256 finds the bundled file, and encoder= takes a bundled name."""
    from pixio_robot.bundled import BUNDLED
    from recon.backbone import resolve_encoder

    sha = BUNDLED["sim_vitn16_v2"].sha256
    info = {"path": "/tmp/site/pixio_robot/weights/sim_vitn16_v2.safetensors", "sha256": sha}
    head = tmp_path / "head.safetensors"  # only its folder is read here
    encoder, found = resolve_encoder(info, head)
    assert found == sha and encoder.embed_dim == 128
    assert resolve_encoder(info, head, override="sim_vitn16_v2")[1] == sha
    with pytest.raises(PixioError, match="no such file"):
        resolve_encoder(info, head, override=str(tmp_path / "nothing.safetensors"))


def test_python_api_reconstructs_a_captured_scene_and_evaluates(data, trained, tmp_path):
    """What `pixio-robot demo` calls: one loaded head, a scene folder to files, metrics as a dict."""
    from pixio_robot.deps import open3d

    o3d = open3d()

    from recon import Reconstructor, evaluate_checkpoint, reconstruct_to_files

    rec = Reconstructor.from_checkpoint(trained / "model.safetensors", device="cpu")
    scene = data / "test" / "scene_000000"
    ply, rrd = tmp_path / "two.ply", tmp_path / "two.rrd"
    summary = reconstruct_to_files(scene, rec, ply, rrd, views=2, intrinsics="scene", threads=1)
    assert summary["views"] == 2 and summary["ply"] == ply and summary["rrd"] == rrd
    assert len(o3d.io.read_point_cloud(str(ply)).points) == summary["points"] > 0
    entities = rrd_entities(rrd)
    assert "/world/cameras/view_001" in entities and "/world/cameras/view_002" not in entities
    with pytest.raises(PixioError, match="exists"):  # nothing replaced without overwrite
        reconstruct_to_files(scene, rec, ply, rrd, views=2)
    with pytest.raises(PixioError, match="intrinsics=scene"):
        reconstruct_to_files([scene / "rgb" / "000.png"], rec, tmp_path / "k.ply", intrinsics="scene")
    assert not (tmp_path / "k.ply").exists()

    results = evaluate_checkpoint(rec, data / "test", views=[2, 3], scenes=1, threads=1)
    assert set(results) == {"2 views", "3 views"}
    for row in results.values():
        assert row["sets"] == row["scenes"] == 1
        assert 0 <= row["pose_auc5"] <= 100 and np.isfinite(row["chamfer"]) and 0 <= row["fscore"] <= 100


def test_the_pose_path_learns_two_scenes_until_it_overfits_them(data, trained):
    """All 24 ordered view pairs of 2 scenes, full batch: the head's relative poses go from
    Pose AUC@5 0 (untrained) to far above it. Minibatches of 4 random sets and 600 steps (the
    earlier test recipe) stayed on the plateau of the constant quaternion (rotation loss ~0.9)."""
    import itertools

    import pixio_robot
    from recon.metrics import pose_auc, relative_pose_errors

    scenes = load_scenes([data / "train"], 64, geometry=True)[:2]
    cache = TokenCache(pixio_robot.load_encoder(trained / "encoder.safetensors"), None, (64, 64))
    tokens = [cache.tokens(s) for s in scenes]
    x, tgt = collate([(s, list(p)) for s in range(2) for p in itertools.permutations(range(4), 2)], tokens, scenes)
    config = ReconConfig(dim=64, depth=2, num_heads=2, head_hidden=64)
    loss_fn = ReconLoss(config)

    def auc(model) -> float:
        with torch.no_grad():
            pred, gt = model.eval()(x).cam2world().double().numpy(), tgt.cam2world.double().numpy()
        return float(np.mean([pose_auc(*relative_pose_errors(p, g)) for p, g in zip(pred, gt, strict=True)]))

    torch.manual_seed(0)
    model = ReconModel(config, x.shape[-1])
    untrained = auc(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(600):
        loss, terms = loss_fn(model(x), tgt)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert untrained < 5 and terms["rotation"] < 0.2, (untrained, terms)
    assert auc(model) > 20, auc(model)


def test_a_refused_run_leaves_no_folder_and_a_resumed_one_keeps_its_own(data, trained, tmp_path, capsys):
    """An encoder the toolkit cannot build is refused after the run folder is made (a random
    encoder is drawn into it): the new folder goes again, an existing run is left as it was."""
    out = tmp_path / "run"
    assert main(train_args(data, out, "steps=2", "encoder=vitn99")) == 2
    assert "unknown encoder size 'vitn99'" in capsys.readouterr().err and not out.exists()
    before = sorted(p.name for p in trained.iterdir())
    assert main(train_args(data, trained, "steps=60", "save_every=30", "encoder=vitn99")) == 2
    assert sorted(p.name for p in trained.iterdir()) == before


def test_a_run_saved_before_pose_frame_resumes_as_reference(data, trained, tmp_path, capsys):
    """Runs started before `recon.pose_frame` existed predicted poses in view 0's frame: a resume
    compares them as `reference` and says so, instead of refusing with a value nobody can pass.
    Runs started before `recon.dense_head` resume as the per-token MLP they had."""
    import shutil

    from pixio_robot.harness import latest_checkpoint

    old = tmp_path / "old_run"
    shutil.copytree(trained, old)
    path = latest_checkpoint(old)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    config = json.loads(ckpt["config"])
    for option in ("pose_frame", "dense_head", "dpt_features"):  # the options added since
        del config["recon"][option]
    torch.save(ckpt | {"config": json.dumps(config)}, path)
    assert main(train_args(data, old, "steps=61", "save_every=30")) == 2
    assert "started with recon.pose_frame='reference'" in capsys.readouterr().err
    assert main(train_args(data, old, "steps=61", "save_every=30", "recon.pose_frame=reference")) == 0


def test_a_head_with_the_dpt_dense_head_trains_from_the_command_line(data, trained, tmp_path):
    out = tmp_path / "dpt"
    assert main(train_args(data, out, "steps=60", "recon.dense_head=dpt", "recon.dpt_features=8")) == 0
    model, _ = ReconModel.load(out / "model.safetensors")
    assert model.config.dense_head == "dpt"
    torch.manual_seed(0)
    untrained = ReconModel(model.config, model.encoder_dim)
    before, after = fixed_loss(untrained, data, out), fixed_loss(model, data, out)
    assert after < 0.8 * before, (before, after)  # as the MLP head in test_training_lowers_the_loss
