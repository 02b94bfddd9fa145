"""The Pixio pre-training model: grid masking, the loss on masked patches only, the decoder,
distillation, and configuration errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pixio_robot import PixioError, create_encoder
from pixio_robot.cli import main
from pretrain.configuration_pixio import ModelConfig
from pretrain.modeling_distill import DistillModel, teacher_tokens
from pretrain.modeling_pixio import (
    PixioPretrainModel,
    cell_patches,
    grid_mask,
    normalize_patches,
    patchify,
    set_attention,
    unpatchify,
)

TINY = dict(encoder="vitn16", decoder_dim=64, decoder_depth=2, decoder_heads=4)


@pytest.mark.parametrize(("size", "grid", "ratio"), [(128, 2, 0.75), (128, 4, 0.75), (256, 4, 0.6), (64, 1, 0.75)])
def test_grid_mask_keeps_exactly_the_stated_number_of_whole_cells(size, grid, ratio):
    h = size // 16
    cells = (h // grid) ** 2
    n_keep_cells = int(cells * (1 - ratio))
    noise = torch.rand(32, cells, generator=torch.Generator().manual_seed(0))
    ids_keep, ids_mask = grid_mask(noise, h, h, grid, n_keep_cells)
    assert ids_keep.shape == (32, n_keep_cells * grid * grid)
    assert ids_mask.shape == (32, h * h - n_keep_cells * grid * grid)
    for keep, masked in zip(ids_keep, ids_mask, strict=True):
        # visible and masked patches partition the grid
        assert sorted(torch.cat([keep, masked]).tolist()) == list(range(h * h))
        # every cell is entirely visible or entirely masked
        visible = torch.zeros(h, h, dtype=torch.bool)
        visible.view(-1)[keep] = True
        per_cell = visible.view(h // grid, grid, h // grid, grid).permute(0, 2, 1, 3).reshape(cells, -1)
        assert ((per_cell.all(1)) | (~per_cell.any(1))).all()
        assert int(per_cell.all(1).sum()) == n_keep_cells
    # different per sample
    assert len({tuple(sorted(k.tolist())) for k in ids_keep}) > 1


def test_cells_are_grid_by_grid_blocks():
    cells = cell_patches(4, 4, 2)
    assert cells.tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]


def test_patchify_matches_the_official_layout_and_inverts():
    x = torch.randn(2, 3, 32, 48)
    p = patchify(x, 16)
    # official MAE/Pixio order: per patch (row, column, channel)
    assert torch.equal(p[1, 4], x[1, :, 16:32, 16:32].permute(1, 2, 0).reshape(-1))
    assert torch.equal(unpatchify(p, 16, 2, 3), x)


def test_loss_is_on_masked_patches_only_against_a_direct_computation():
    torch.manual_seed(0)
    model = PixioPretrainModel(ModelConfig(image_size=128, mask_grid=2, **TINY))
    x = torch.randn(3, 3, 128, 128)
    noise = torch.rand(3, model.num_cells)
    out = model(x, noise)
    # direct: full prediction grid, mask from the noise, per-patch normalised target
    keep_cells = noise.argsort(1)[:, : model.n_keep_cells]
    masked = torch.ones(3, 8, 8, dtype=torch.bool)
    for b in range(3):
        for c in keep_cells[b].tolist():
            r, col = divmod(c, 4)
            masked[b, 2 * r : 2 * r + 2, 2 * col : 2 * col + 2] = False
    masked = masked.view(3, 64)
    target = patchify(x, 16)
    mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
    target = (target - mean) / (var + 1e-6) ** 0.5
    pred_full = torch.zeros(3, 64, 768)
    pred_full.scatter_(1, out.ids_mask[..., None].expand(-1, -1, 768), out.pred)
    per_patch = ((pred_full - target) ** 2).mean(-1)
    direct = (per_patch * masked).sum() / masked.sum()
    assert torch.allclose(out.loss, direct, atol=1e-6)
    assert sorted(out.ids_mask[0].tolist()) == masked[0].nonzero().flatten().tolist()


def test_norm_pix_target_is_per_patch_standardised():
    t = torch.randn(2, 5, 768) * 3 + 7
    n = normalize_patches(t)
    assert torch.allclose(n.mean(-1), torch.zeros(2, 5), atol=1e-5)
    assert torch.allclose(n.std(-1), torch.ones(2, 5), atol=1e-4)


def test_class_tokens_pass_through_the_decoder():
    torch.manual_seed(0)
    model = PixioPretrainModel(ModelConfig(image_size=64, mask_grid=2, **TINY))
    assert model.decoder.pos_embed.shape == (1, 8 + 16, 64)
    x = torch.randn(2, 3, 64, 64)
    model(x).loss.backward()
    # the decoder's class-token position rows get gradients: the class tokens are decoded
    assert model.decoder.pos_embed.grad[0, :8].abs().sum() > 0
    assert model.encoder.cls_token.grad.abs().sum() > 0


def test_plain_mae_is_a_config():
    model = PixioPretrainModel(ModelConfig(image_size=64, mask_grid=1, n_cls_tokens=1, **TINY))
    out = model(torch.randn(2, 3, 64, 64))
    assert model.num_cells == 16 and out.ids_keep.shape == (2, 4) and model.encoder.num_prefix_tokens == 1


def test_encoder_is_the_pixio_robot_encoder():
    from pixio_robot.encoder import PixioViT

    model = PixioPretrainModel(ModelConfig(image_size=64, mask_grid=2, **TINY))
    assert type(model.encoder) is PixioViT


def test_math_and_fused_attention_agree():
    torch.manual_seed(0)
    model = PixioPretrainModel(ModelConfig(image_size=64, mask_grid=2, **TINY))
    x, noise = torch.randn(2, 3, 64, 64), torch.rand(2, 4)
    set_attention(model, "math", torch.device("cpu"), torch.float32)
    a = model(x, noise).loss
    set_attention(model, "fused", torch.device("cpu"), torch.float32)
    b = model(x, noise).loss
    assert torch.allclose(a, b, atol=1e-5)
    assert set_attention(model, "auto", torch.device("cpu"), torch.bfloat16) == "math"


def test_distillation_loss_against_a_direct_computation():
    torch.manual_seed(0)
    teacher = create_encoder("vitt16", img_size=64).eval()
    model = DistillModel(create_encoder("vitn16", img_size=64), teacher.embed_dim, 64, 2, 0.5)
    x, noise = torch.randn(2, 3, 64, 64), torch.rand(2, 4)
    t = teacher_tokens(teacher, x)
    out = model(x, noise, t)
    # direct: the student on its class tokens + visible patches, final norm, projector;
    # the teacher's last block before its norm
    n, ids = 8, out.ids_keep
    tokens = model.encoder.embed(x)
    vis = torch.cat([tokens[:, :n], tokens[:, n:].gather(1, ids[..., None].expand(-1, -1, 128))], 1)
    for blk in model.encoder.blocks:
        vis = blk(vis)
    s = model.projector(model.encoder.norm(vis))
    pre = teacher.embed(x)
    for blk in teacher.blocks:
        pre = blk(pre)
    t_patch = pre[:, n:].gather(1, ids[..., None].expand(-1, -1, 192))
    loss_cls = 1 - F.cosine_similarity(s[:, :n], pre[:, :n], dim=-1).mean()
    loss_patch = 1 - F.cosine_similarity(s[:, n:], t_patch, dim=-1).mean()
    assert torch.allclose(out.loss, (loss_cls + loss_patch) / 2, atol=1e-5)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.mask_ratio=1.2", "mask_ratio=1.2 must lie strictly between 0 and 1"),
        ("model.mask_ratio=0", "mask_ratio=0.0 must lie strictly between 0 and 1"),
        ("model.mask_ratio=0.99", "leaves none of the 16 cells visible"),
        ("model.mask_grid=3", "mask_grid=3 does not divide the 8x8 patch grid"),
        ("model.image_size=100", "image_size=100 is not a multiple of the patch size"),
        ("batch_size=10", "batch_size=10 does not split into 4 accumulation steps"),
    ],
)
def test_bad_configs_give_one_clear_line(tmp_path, capsys, override, message):
    extra = ["accum_steps=4"] if override.startswith("batch") else []
    code = main(["pretrain", "data.sources=[nowhere]", f"run.dir={tmp_path}", override, *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_bad_mask_ratio_is_refused_by_the_model_too():
    with pytest.raises(PixioError, match="mask_ratio"):
        PixioPretrainModel(ModelConfig(image_size=64, mask_grid=2, mask_ratio=-0.1, **TINY))


def test_help_lists_nested_options_with_the_preset_values_and_the_presets(capsys):
    assert main(["pretrain", "--help"]) == 0
    out = capsys.readouterr().out
    assert "model.encoder" in out and "'vitn16'" in out and "schedule.warmup_steps" in out
    assert "presets (pretrain=NAME):" in out and "vith16" in out and "mae_vitn16_128" in out


def _saved_bytes(fn) -> tuple[int, torch.Tensor]:
    """Bytes of the tensors autograd keeps for the backward pass while `fn()` runs."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total, out


def _count_block_calls(blocks) -> list:
    calls = []
    for blk in blocks:
        blk.register_forward_pre_hook(lambda *a: calls.append(1))  # the recompute stops early: no post-hook
    return calls


def test_activation_checkpointing_recomputes_blocks_keeps_less_and_gives_the_same_gradients():
    torch.manual_seed(0)
    model = PixioPretrainModel(ModelConfig(image_size=64, mask_grid=1, **TINY))
    images, noise = torch.randn(4, 3, 64, 64), model.random_noise(4, torch.Generator().manual_seed(1))
    calls = _count_block_calls([*model.encoder.blocks, *model.decoder.blocks])
    n_blocks = len(model.encoder.blocks) + len(model.decoder.blocks)

    runs = {}
    for on in (False, True):
        model.set_grad_checkpointing(on)
        model.zero_grad()
        calls.clear()
        saved, out = _saved_bytes(lambda: model(images, noise))
        out.loss.backward()
        runs[on] = (saved, len(calls), [p.grad.clone() for p in model.parameters()])
    assert runs[False][1] == n_blocks  # one forward per block
    assert runs[True][1] == 2 * n_blocks  # and each recomputed in the backward pass
    assert runs[True][0] < 0.5 * runs[False][0]  # activations kept: block inputs only
    for a, b in zip(runs[False][2], runs[True][2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_grad_checkpointing_option_and_timm_switch_reach_every_encoder_path():
    model = PixioPretrainModel(ModelConfig(image_size=64, mask_grid=1, grad_checkpointing=True, **TINY))
    assert model.encoder.grad_checkpointing and model.decoder.grad_checkpointing
    encoder = create_encoder("vitn16", img_size=64)
    encoder.set_grad_checkpointing(True)  # timm's own switch
    calls = _count_block_calls(encoder.blocks)
    x = torch.randn(2, 3, 64, 64)
    for forward in (encoder.forward_features, lambda x: encoder.features(x, -1)[0].patches):
        calls.clear()
        forward(x).sum().backward()
        assert len(calls) == 2 * len(encoder.blocks)
    calls.clear()
    with torch.no_grad():  # nothing to recompute without gradients
        encoder(x)
    assert len(calls) == len(encoder.blocks)
