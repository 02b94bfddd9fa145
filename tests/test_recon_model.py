"""The head: any number of views, view-0 reference frame, known intrinsics, checkpoints, loss."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from envs.cameras import intrinsics, look_at
from pixio_robot.errors import PixioError
from recon import geometry
from recon.configuration_recon import ReconConfig
from recon.infer import Reconstructor
from recon.losses import ReconLoss, Targets, robust
from recon.modeling_recon import ReconModel, ReconOutput

TINY = ReconConfig(dim=32, depth=4, num_heads=2, head_hidden=32)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = ReconModel(TINY, encoder_dim=24, patch_size=16).eval()
    with torch.no_grad():  # away from the near-identity initialisation, so outputs differ per view
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


@pytest.mark.parametrize("views", [1, 2, 5])
def test_any_number_of_views(model, views):
    tokens = torch.randn(2, views, 3, 4, 24)
    out = model(tokens)
    assert out.rays.shape == (2, views, 48, 64, 3) and out.depth.shape == (2, views, 48, 64)
    assert torch.allclose(out.rays.norm(dim=-1), torch.ones(2, views, 48, 64), atol=1e-5)
    assert (out.depth > 0).all() and (out.conf >= 1).all() and (out.scale > 0).all()
    assert torch.allclose(out.quat.norm(dim=-1), torch.ones(2, views))
    # view 0 is the reference frame: identity pose
    assert torch.equal(out.cam2world()[:, 0], torch.eye(4).expand(2, 4, 4))
    assert out.points(metric=True).shape == (2, views, 48, 64, 3)


def test_other_views_are_exchangeable_but_view_0_is_marked(model):
    tokens = torch.randn(1, 3, 2, 2, 24)
    out = model(tokens)
    swapped = model(tokens[:, [0, 2, 1]])
    # permuting views 1 and 2 permutes their outputs (no hidden dependence on the order)...
    assert torch.allclose(swapped.depth[:, 1], out.depth[:, 2], atol=1e-5)
    assert torch.allclose(swapped.quat[:, 2], out.quat[:, 1], atol=1e-5)
    assert torch.allclose(swapped.scale, out.scale, atol=1e-5)
    # ...while the reference marker makes view 0 special: a view's output depends on its slot
    moved = model(tokens[:, [1, 0, 2]])
    assert not torch.allclose(moved.depth[:, 0], out.depth[:, 1], atol=1e-4)


def test_shared_pose_frame_is_each_views_own_pose_relative_to_view_0():
    torch.manual_seed(0)
    shared = ReconModel(ReconConfig(dim=32, depth=2, num_heads=2, head_hidden=32, pose_frame="shared"), 24)
    with torch.no_grad():
        for p in shared.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    tokens = torch.randn(2, 3, 2, 2, 24)
    captured = {}
    shared.pose_head.register_forward_hook(lambda mod, inp, out: captured.update(raw=out))
    out = shared(tokens)
    raw = captured["raw"]  # (B, V, 7): each view's pose in the frame the views share
    own = geometry.pose_matrix(torch.nn.functional.normalize(raw[..., 3:], dim=-1), raw[..., :3])
    assert torch.allclose(out.cam2world(), geometry.relative_to_first(own), atol=1e-5)
    assert not torch.allclose(out.cam2world()[:, 1], own[:, 1], atol=1e-3)  # not the raw pose itself
    # a head saved before the option existed predicted poses in view 0's frame
    old = {k: v for k, v in TINY.to_dict().items() if k != "pose_frame"}
    assert ReconConfig.from_dict(old).pose_frame == "reference"
    with pytest.raises(PixioError, match="pose_frame"):
        ReconConfig(pose_frame="world").check()


def test_known_intrinsics_enter_the_tokens_and_fix_the_rays(model):
    tokens = torch.randn(1, 2, 2, 3, 24)
    K = torch.from_numpy(intrinsics(50.0, 32, 48)).float().expand(1, 2, 3, 3)
    out = model(tokens, K)
    assert torch.allclose(out.rays, geometry.rays_from_intrinsics(K.double(), 32, 48).float(), atol=1e-6)
    assert not torch.allclose(out.depth, model(tokens).depth)  # the ray embedding changes the tokens
    partly = model(tokens, K, known=torch.tensor([[True, False]]))
    assert torch.allclose(partly.rays[:, 0], out.rays[:, 0]) and not torch.allclose(partly.rays[:, 1], out.rays[:, 1])


def test_only_the_assumed_cameras_intrinsics_may_be_hidden():
    K = torch.from_numpy(np.stack([intrinsics(50.0, 64, 64), intrinsics(60.0, 64, 64)]))[None]  # (1, 2, 3, 3)
    assert ReconModel(ReconConfig(assumed_fovy=50.0), 8).assumed_camera(K, 64).tolist() == [[True, False]]
    assert ReconModel(ReconConfig(), 8).assumed_camera(K, 64).tolist() == [[True, True]]
    with pytest.raises(PixioError, match="recon.assumed_fovy=200"):
        ReconConfig(assumed_fovy=200).check()


def test_the_assumed_cameras_intrinsics_only_replace_its_rays(model):
    head = ReconModel(dataclasses.replace(TINY, assumed_fovy=50.0), encoder_dim=24).eval()
    head.load_state_dict(model.state_dict())
    rec = Reconstructor(head, cache=None, image_size=(32, 48))
    tokens = torch.randn(1, 2, 2, 3, 24)
    K = torch.from_numpy(np.stack([intrinsics(50.0, 32, 48), intrinsics(60.0, 32, 48)])).float()[None]
    assert head.assumed_camera(K, 32).tolist() == [[True, False]]
    out = rec.predict(tokens, K)
    # both views take their given rays...
    assert torch.allclose(out.rays, geometry.rays_from_intrinsics(K.double(), 32, 48).float(), atol=1e-6)
    # ...but only the fovy-60 view is told them: the output is the head's with view 0 untold
    untold = head(tokens, K, known=torch.tensor([[False, True]]))
    assert torch.allclose(out.depth, untold.depth, atol=1e-6) and torch.allclose(out.scale, untold.scale)
    assert not torch.allclose(out.depth, head(tokens, K).depth)
    # a head without an assumed camera is told every view's intrinsics
    told = Reconstructor(model, cache=None, image_size=(32, 48)).predict(tokens, K)
    assert torch.allclose(told.depth, model(tokens, K).depth)


def test_save_and_load_round_trip(model, tmp_path):
    path = model.save(tmp_path / "head.safetensors", {"encoder": {"path": "x", "sha256": "y"}, "image_size": [32, 48]})
    loaded, meta = ReconModel.load(path)
    assert meta["encoder"] == {"path": "x", "sha256": "y"} and meta["image_size"] == [32, 48]
    tokens = torch.randn(1, 2, 2, 3, 24)
    assert torch.equal(loaded(tokens).depth, model(tokens).depth)
    with pytest.raises(PixioError, match="not a recon head"):
        from safetensors.torch import save_file

        save_file({"a": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
        ReconModel.load(tmp_path / "other.safetensors")
    with pytest.raises(PixioError, match="expected Pixio tokens"):
        model(torch.randn(1, 2, 2, 3, 25))


def test_the_dpt_dense_head_gives_full_resolution_outputs_on_any_grid(tmp_path):
    torch.manual_seed(0)
    config = ReconConfig(dim=32, depth=4, num_heads=2, head_hidden=32, dense_head="dpt", dpt_features=8)
    model = ReconModel(config, encoder_dim=24).eval()
    for h, w in [(3, 4), (8, 8), (5, 7)]:  # odd sides: the coarser DPT path is cropped to the finer one
        out = model(torch.randn(2, 3, h, w, 24))
        assert out.rays.shape == (2, 3, 16 * h, 16 * w, 3) and out.mask_logits.shape == (2, 3, 16 * h, 16 * w)
        assert torch.allclose(out.rays.norm(dim=-1), torch.ones(2, 3, 16 * h, 16 * w), atol=1e-5)
        # the same starting guess as the MLP head: rays about straight ahead at depth about 1
        assert out.rays[..., 2].min() > 0.9 and (out.depth.log().abs() < 0.5).all()
    tokens = torch.randn(1, 2, 2, 3, 24)
    loaded, _ = ReconModel.load(model.save(tmp_path / "dpt.safetensors"))
    assert loaded.config.dense_head == "dpt" and torch.equal(loaded(tokens).depth, model(tokens).depth)
    # the blocks it reads after the input tokens, for heads of any depth
    assert [ReconConfig(depth=d).dpt_blocks for d in (1, 2, 4, 8)] == [[0, 0, 0], [0, 0, 1], [0, 1, 3], [1, 4, 7]]
    # heads saved before the option had the per-token MLP
    old = {k: v for k, v in TINY.to_dict().items() if k not in ("dense_head", "dpt_features")}
    assert ReconConfig.from_dict(old).dense_head == "mlp"
    with pytest.raises(PixioError, match="recon.dense_head='conv': choose mlp or dpt"):
        ReconConfig(dense_head="conv").check()
    with pytest.raises(PixioError, match="recon.dpt_features=3"):
        ReconConfig(dense_head="dpt", dpt_features=3).check()


def _targets(views: int = 3, metric: bool = True) -> Targets:
    rng = np.random.default_rng(0)
    h, w = 16, 16
    poses = []
    for i in range(views):
        a = 2 * np.pi * i / views
        T = np.eye(4)
        eye = np.array([0.8 * np.cos(a), 0.8 * np.sin(a), 0.5])
        T[:3, :3], T[:3, 3] = look_at(eye, np.zeros(3)), eye
        poses.append(T)
    depth = rng.uniform(0.5, 1.2, (1, views, h, w)).astype(np.float32)
    K = np.broadcast_to(intrinsics(50.0, h, w), (1, views, 3, 3))
    return Targets.from_views(
        torch.from_numpy(depth),
        torch.from_numpy(K.copy()),
        torch.from_numpy(np.stack(poses))[None],
        torch.tensor([metric]),
    )


def _perfect(tgt: Targets, m: float, conf: float = 1.0) -> ReconOutput:
    shape = tgt.depth.shape
    return ReconOutput(
        rays=tgt.rays,
        depth=tgt.depth / m,
        conf=torch.full(shape, conf),
        mask_logits=torch.where(tgt.valid, 20.0, -20.0),
        quat=geometry.matrix_to_quat(tgt.cam2world[..., :3, :3].double()).float(),
        trans=tgt.cam2world[..., :3, 3] / m,
        scale=torch.tensor([m]),
    )


def test_loss_of_a_perfect_prediction_is_zero_at_any_scale():
    tgt = _targets()
    loss_fn = ReconLoss(ReconConfig())
    for m in (1.0, 0.3):
        _, terms = loss_fn(_perfect(tgt, m), tgt)
        for name in ("points", "cam_points", "rays", "depth", "translation", "rotation", "scale"):
            assert terms[name] == pytest.approx(0.0, abs=1e-5), name
    # -q is the same rotation: no rotation loss either
    out = _perfect(tgt, 1.0)
    out.quat = -out.quat
    assert loss_fn(out, tgt)[1]["rotation"] == pytest.approx(0.0, abs=1e-6)


def test_loss_terms_respond_to_their_errors():
    tgt = _targets()
    loss_fn = ReconLoss(ReconConfig())
    # a wrong metric scale only costs the scale term: |log 2|
    _, terms = loss_fn(_perfect(tgt, 1.0), tgt)
    wrong = _perfect(tgt, 1.0)
    wrong.scale = torch.tensor([2.0])
    _, t2 = loss_fn(wrong, tgt)
    assert t2["scale"] == pytest.approx(np.log(2.0), rel=1e-5) and t2["points"] == pytest.approx(
        terms["points"], abs=1e-6
    )
    # ...and nothing on data without metric scale
    nonmetric = _targets(metric=False)
    assert loss_fn(wrong, nonmetric)[1]["scale"] == 0.0
    # confidence: conf * err - 0.2 log(conf); with zero error a higher confidence lowers the loss
    _, confident = loss_fn(_perfect(tgt, 1.0, conf=3.0), tgt)
    assert confident["points"] == pytest.approx(-0.2 * np.log(3.0), abs=1e-5)
    # Barron's loss with alpha 0.5, c 0.05: |a-2|/a ((x^2/c^2/|a-2| + 1)^(a/2) - 1), quadratic near 0
    d = torch.tensor([[0.001, 0, 0], [0.6, 0.8, 0]])
    r = robust(d, 0.5, 0.05)
    assert r[0] == pytest.approx(0.5 * (0.001 / 0.05) ** 2, rel=1e-2)
    assert r[1] == pytest.approx(3 * ((1 / 0.05**2 / 1.5 + 1) ** 0.25 - 1), rel=1e-6)


def test_loss_backpropagates_to_every_trainable_part():
    torch.manual_seed(0)
    model = ReconModel(TINY, encoder_dim=24)
    tgt = _targets(views=3)
    out = model(torch.randn(1, 3, 1, 1, 24), tgt.K)
    loss, _ = ReconLoss(ReconConfig())(out, tgt)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


@pytest.mark.parametrize("scale_grad", ["head", "both"])
def test_the_scale_loss_trains_the_geometrys_size_only_when_asked(scale_grad):
    # every other term is scale-invariant: the size of the up-to-scale geometry gets a gradient
    # from the scale term alone, and only with scale_grad=both; m gets one either way
    tgt = _targets()
    out = _perfect(tgt, 1.0)
    size = torch.tensor(1.1, requires_grad=True)  # the geometry 10 % too large, m right
    out.depth, out.trans = out.depth * size, out.trans * size
    out.scale = out.scale.clone().requires_grad_()
    cfg = ReconConfig(scale_grad=scale_grad).check()
    loss, terms = ReconLoss(cfg)(out, tgt)
    loss.backward()
    assert terms["scale"] == pytest.approx(np.log(1.1), rel=1e-4)
    assert out.scale.grad.item() > 0  # a smaller m lowers the loss
    if scale_grad == "both":
        assert size.grad.item() > 0  # so does a smaller geometry
    else:
        assert size.grad.abs().item() < 1e-6


def test_an_unknown_scale_grad_is_refused():
    with pytest.raises(PixioError, match="recon.scale_grad='geometry': choose head or both"):
        ReconConfig(scale_grad="geometry").check()
