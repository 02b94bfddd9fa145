"""The CortexBench head is eai-vc's: FLARE fusion of the frame history, BatchNorm MLP, last
layer started at 1 % scale."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from pixio_robot.errors import PixioError
from policies.configuration_cortexbench import CortexBenchConfig
from policies.heads import head_config
from policies.modeling_cortexbench import CortexBenchHead


def test_flare_fusion_and_network_equal_eai_vc_on_fixed_inputs():
    torch.manual_seed(0)
    head = CortexBenchHead(CortexBenchConfig(), feature_dim=8, grid=(2, 2), state_dim=4, action_dim=3).eval()
    e = torch.randn(5, 3, 8)  # frames t-2, t-1, t
    state = torch.randn(5, 4)
    # eai-vc: [e(t-1) - e(t-2), e(t) - e(t-1), e(t)], then the proprioception
    x = torch.cat([e[:, 1] - e[:, 0], e[:, 2] - e[:, 1], e[:, 2], state], dim=1)
    bn = head.net.input_norm
    h = (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    linears = [m for m in head.net.mlp if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [256, 256, 256, 3]
    for m in linears[:-1]:
        h = torch.relu(m(h))
    expected = linears[-1](h)
    torch.testing.assert_close(head({"global": e}, state)[:, 0], expected, rtol=1e-6, atol=1e-7)


def test_last_layer_starts_at_one_percent_and_stack_fusion_remains_available():
    torch.manual_seed(0)
    flare = CortexBenchHead(CortexBenchConfig(), 8, (2, 2), 4, 3)
    torch.manual_seed(0)
    plain = CortexBenchHead(CortexBenchConfig(fusion="stack", last_layer_scale=1.0), 8, (2, 2), 4, 3)
    torch.testing.assert_close(flare.net.mlp[-1].weight, 0.01 * plain.net.mlp[-1].weight)
    e = torch.randn(2, 3, 8)
    assert torch.equal(plain.fuse(e), e.flatten(1))
    with pytest.raises(PixioError, match="head.fusion='sum'"):
        head_config({"name": "cortexbench", "fusion": "sum"})


def test_a_head_saved_before_flare_keeps_stacking_its_frames():
    saved = dataclasses.asdict(CortexBenchConfig())
    del saved["fusion"], saved["last_layer_scale"], saved["normalize_actions"]  # what config.json held before
    assert head_config(saved).fusion == "stack"
    assert head_config({"name": "cortexbench"}).fusion == "flare"  # a new head: eai-vc's


def test_spatial_softmax_finds_a_hot_patch():
    from policies.modeling_keypoints import SpatialSoftmax

    layer = SpatialSoftmax(in_dim=4, keypoints=1, grid=(4, 8))
    with torch.no_grad():
        layer.score.weight.copy_(torch.tensor([[50.0, 0, 0, 0]]))
        layer.score.bias.zero_()
    patches = torch.zeros(1, 4, 8, 4)
    patches[0, 3, 0, 0] = 1.0  # bottom-left patch
    x, y = layer(patches)[0].tolist()
    assert x == pytest.approx(-1.0, abs=1e-3) and y == pytest.approx(1.0, abs=1e-3)


def test_attention_pooling_reads_the_tokens_under_the_hot_patch():
    """head.values: each heat map also pools linear read-outs of the tokens under it."""
    from policies.modeling_keypoints import SpatialSoftmax

    layer = SpatialSoftmax(in_dim=4, keypoints=1, grid=(4, 8), values=2)
    assert layer.out_dim == 4
    with torch.no_grad():
        layer.score.weight.copy_(torch.tensor([[50.0, 0, 0, 0]]))
        layer.score.bias.zero_()
        layer.value.weight.copy_(torch.tensor([[0.0, 1, 0, 0], [0, 0, 1, 0]]))
        layer.value.bias.zero_()
    patches = torch.zeros(1, 4, 8, 4)
    patches[0, 1, 5] = torch.tensor([1.0, 0.3, -0.7, 9.0])  # the hot patch carries (0.3, -0.7)
    x, y, v1, v2 = layer(patches)[0].tolist()
    assert x == pytest.approx(-1 + 2 * 5 / 7, abs=1e-3) and y == pytest.approx(-1 + 2 / 3, abs=1e-3)
    assert v1 == pytest.approx(0.3, abs=1e-3) and v2 == pytest.approx(-0.7, abs=1e-3)


def test_per_view_maps_each_find_their_own_cameras_hot_patch():
    """head.per_view: with two cameras' grids side by side, each camera has its own maps,
    normalised over its own grid, with x over [-1, 1] within it: a hot patch in one camera
    moves only that camera's keypoints, however hot the other camera's patch is."""
    from policies.modeling_keypoints import SpatialSoftmax

    layer = SpatialSoftmax(in_dim=4, keypoints=1, grid=(4, 8), views=2)  # two 4x4 grids
    assert layer.out_dim == 4
    with torch.no_grad():
        layer.score.weight.copy_(torch.tensor([[50.0, 0, 0, 0], [0, 50.0, 0, 0]]))
        layer.score.bias.zero_()
    patches = torch.zeros(1, 4, 8, 4)
    patches[0, 3, 0, 0] = 1.0  # camera 0, bottom-left
    patches[0, 0, 7, 1] = 9.0  # camera 1, top-right (it would swamp a map shared by both)
    x0, y0, x1, y1 = layer(patches)[0].tolist()
    assert (x0, y0) == (pytest.approx(-1.0, abs=1e-3), pytest.approx(1.0, abs=1e-3))
    assert (x1, y1) == (pytest.approx(1.0, abs=1e-3), pytest.approx(-1.0, abs=1e-3))
    patches[0, 0, 7, 0] = 0.5  # a second, cooler patch in camera 1 for camera 0's feature
    assert layer(patches)[0, :2].tolist() == pytest.approx([-1.0, 1.0], abs=1e-3)
    with pytest.raises(ValueError, match="does not hold 3 views"):
        SpatialSoftmax(in_dim=4, keypoints=1, grid=(4, 8), views=3)


@pytest.mark.parametrize("name", ["cortexbench", "keypoints", "spatial"])
def test_frames_shared_by_overlapping_windows_are_coded_once_with_the_same_actions(name):
    """train-policy hands a head each distinct frame of a batch once and the windows' indices
    into them (`frames`): the actions equal those from every window's frames in full."""
    from policies.modeling_keypoints import KeypointsHead
    from policies.modeling_spatial import SpatialHead

    torch.manual_seed(0)
    cls = {"cortexbench": CortexBenchHead, "keypoints": KeypointsHead, "spatial": SpatialHead}[name]
    head = cls(head_config({"name": name, "last_layer_scale": 1.0}), 8, (4, 8), 4, 3, views=2)
    key = "global" if name == "cortexbench" else "patches"
    distinct = {key: torch.randn(6, 8) if key == "global" else torch.randn(6, 4, 8, 8)}
    frames = torch.tensor([[0, 1, 2], [1, 2, 3], [2, 3, 4], [0, 0, 5]])  # overlapping histories
    state = torch.randn(4, 4)
    shared = head(distinct, state, frames=frames)
    full = head({key: distinct[key][frames]}, state)
    assert shared.abs().max() > 0.01 and torch.allclose(shared, full, atol=1e-5)


def test_a_keypoint_head_saved_before_per_view_keeps_one_shared_map_set():
    saved = dataclasses.asdict(head_config({"name": "keypoints"}))
    del saved["per_view"], saved["temperature"]  # what config.json held before the options
    old = head_config(saved)
    assert old.per_view is False and old.temperature == 1.0
    new = head_config({"name": "keypoints"})  # a new head: per-camera maps that start sharp
    assert new.per_view is True and new.temperature == 0.1
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(PixioError, match=r"head.temperature=.*give an initial softmax temperature > 0"):
            head_config({"name": "keypoints", "temperature": bad})


def test_the_eai_vc_presets_set_cortexbench_metaworld_protocol():
    """collect=eai_vc and train-policy=eai_vc: 25 demonstrations at 256 px from top_cap2 over the
    whole horizon; the CortexBench head (FLARE, x0.01: tested above) on raw actions, evaluated
    every 5 epochs on 25 episodes."""
    from envs.commands import CollectConfig
    from pixio_robot.config import compose_config
    from policies.commands import TrainPolicyConfig

    collect = compose_config("collect", CollectConfig, ["collect=eai_vc", "env=metaworld/assembly", "out=x"])
    assert (collect.episodes, collect.cameras, collect.image_size, collect.success_hold) == (25, ["top_cap2"], 256, 500)
    train = compose_config(
        "train-policy", TrainPolicyConfig, ["train-policy=eai_vc", "dataset=d", "encoder=e", "out=o"]
    )
    hc = head_config(train.head)
    assert hc == CortexBenchConfig(normalize_actions=False)
    assert (train.epochs, train.batch_size, train.eval_every, train.eval_episodes) == (100, 256, 5, 25)


def test_raw_actions_keep_the_dataset_statistics_out_of_the_actions():
    from policies.configuration_pixio import PixioConfig
    from policies.modeling_pixio import PixioPolicy

    stats = {
        k: {"mean": torch.full((n,), 3.0), "std": torch.full((n,), 2.0)}
        for k, n in (("observation.state", 4), ("action", 3))
    }
    for normalize, mean in ((True, 3.0), (False, 0.0)):
        inputs, outputs = PixioConfig.features_for([], (32, 32), 4, 3, env_state_dim=5)
        config = PixioConfig(
            backbone={"kind": "oracle", "name": "oracle", "config": {"dim": 5}},
            cameras=[],
            head={"name": "cortexbench", "normalize_actions": normalize},
            input_features=inputs,
            output_features=outputs,
        )
        policy = PixioPolicy(config, dataset_stats=stats)
        assert policy.action_mean.tolist() == [mean] * 3 and policy.state_mean.tolist() == [3.0] * 4


def test_a_head_saved_before_flare_fusion_keeps_stacking_its_frames():
    from policies.heads import head_config

    old = {"name": "cortexbench", "history": 3, "hidden": [256, 256, 256], "use_state": True, "dropout": 0.0}
    old |= {"chunk_size": 1, "lr": 1e-3, "weight_decay": 0.0}  # every option of its time, no fusion
    config = head_config(old)
    assert config.fusion == "stack" and config.last_layer_scale == 1.0
    assert head_config({"name": "cortexbench"}).fusion == "flare"  # a new, partial config: eai-vc's
