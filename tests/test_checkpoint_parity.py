"""Released layouts load and match their reference implementations to 1e-5 (float32)."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from pixio_robot import load_encoder

SIZES = [(256, 256), (320, 224)]
TOL = 1e-5


def official_state_dict(hf) -> dict[str, torch.Tensor]:
    """The official `pixio_<size>.pth` layout, built from a transformers model's weights."""
    sd = hf.state_dict()
    out = {
        "cls_token": sd["embeddings.cls_token"],
        "pos_embed": sd["embeddings.position_embeddings"],
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["layernorm.weight"],
        "norm.bias": sd["layernorm.bias"],
    }
    for i in range(hf.config.num_hidden_layers):
        p = f"layers.{i}."
        for kind in ("weight", "bias"):
            out[f"blocks.{i}.norm1.{kind}"] = sd[p + f"layernorm_before.{kind}"]
            out[f"blocks.{i}.norm2.{kind}"] = sd[p + f"layernorm_after.{kind}"]
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([sd[p + f"attention.{c}_proj.{kind}"] for c in "qkv"])
            out[f"blocks.{i}.attn.proj.{kind}"] = sd[p + f"attention.o_proj.{kind}"]
            out[f"blocks.{i}.mlp.fc1.{kind}"] = sd[p + f"mlp.fc1.{kind}"]
            out[f"blocks.{i}.mlp.fc2.{kind}"] = sd[p + f"mlp.fc2.{kind}"]
    return {k: v.clone() for k, v in out.items()}


def official_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, n_cls: int, heads: int) -> list[torch.Tensor]:
    """The official PixioViT forward written out with plain tensor ops; per-block raw tokens."""
    d = sd["cls_token"].shape[-1]
    h, w = x.shape[-2] // 16, x.shape[-1] // 16
    pos = sd["pos_embed"]
    g = int((pos.shape[1] - n_cls) ** 0.5)
    if not g == h == w:
        grid = pos[:, n_cls:].reshape(1, g, g, d).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:, :n_cls], grid.permute(0, 2, 3, 1).reshape(1, h * w, d)], 1)
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=16).flatten(2).transpose(1, 2)
    t = t + pos[:, n_cls:]
    t = torch.cat([(sd["cls_token"] + pos[:, :n_cls]).expand(x.shape[0], -1, -1), t], 1)

    def ln(v, name):
        return F.layer_norm(v, (d,), sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-6)

    outs = []
    i = 0
    while f"blocks.{i}.norm1.weight" in sd:
        b = f"blocks.{i}."
        y = F.linear(ln(t, b + "norm1"), sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"])
        q, k, v = y.reshape(*y.shape[:2], 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) * (d // heads) ** -0.5, dim=-1) @ v
        t = t + F.linear(a.transpose(1, 2).reshape(t.shape), sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
        y = F.gelu(F.linear(ln(t, b + "norm2"), sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"]))
        t = t + F.linear(y, sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
        outs.append(t)
        i += 1
    return outs


def first_release_state_dict(hf) -> dict[str, torch.Tensor]:
    """The key layout of the first transformers release (encoder.layer.{i}..., norm1, mlp.fc1)."""
    renames = [
        (r"^layers\.(\d+)\.layernorm_before\.", r"encoder.layer.\1.norm1."),
        (r"^layers\.(\d+)\.layernorm_after\.", r"encoder.layer.\1.norm2."),
        (r"^layers\.(\d+)\.attention\.q_proj\.", r"encoder.layer.\1.attention.attention.query."),
        (r"^layers\.(\d+)\.attention\.k_proj\.", r"encoder.layer.\1.attention.attention.key."),
        (r"^layers\.(\d+)\.attention\.v_proj\.", r"encoder.layer.\1.attention.attention.value."),
        (r"^layers\.(\d+)\.attention\.o_proj\.", r"encoder.layer.\1.attention.output.dense."),
        (r"^layers\.(\d+)\.mlp\.", r"encoder.layer.\1.mlp."),
    ]
    out = {}
    for k, v in hf.state_dict().items():
        for pattern, repl in renames:
            k = re.sub(pattern, repl, k)
        out[k] = v.contiguous()
    return out


@pytest.fixture
def official_pth(hf_pixio, tmp_path):
    path = tmp_path / "pixio_tiny.pth"
    torch.save(official_state_dict(hf_pixio), path)
    return path


@pytest.mark.parametrize("size", SIZES)
def test_official_pth_matches_reference_forward(hf_pixio, official_pth, size):
    enc = load_encoder(official_pth, num_heads=4)  # heads are not in the weights
    assert enc.config["n_cls_tokens"] == 8 and enc.config["depth"] == 4
    x = torch.randn(2, 3, *size)
    sd = official_state_dict(hf_pixio)
    ref = official_forward(sd, x, n_cls=8, heads=4)
    with torch.no_grad():
        tokens = enc.features(x, [1, 3], raw=True)
        final = enc(x)
    for got, want in zip(tokens, [ref[1], ref[3]], strict=True):
        raw = torch.cat([got.cls_raw, got.patches_raw.flatten(1, 2)], 1)
        assert (raw - want).abs().max() <= TOL
    want_final = F.layer_norm(ref[-1], (64,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    assert (final - want_final).abs().max() <= TOL


@pytest.mark.parametrize("size", SIZES)
def test_official_pth_matches_transformers(hf_pixio, official_pth, size):
    enc = load_encoder(official_pth, num_heads=4)  # heads are not in the weights
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = hf_pixio(pixel_values=x)
        assert (enc(x) - ref.last_hidden_state).abs().max() <= TOL
        assert (enc.global_embedding(x) - ref.pooler_output).abs().max() <= TOL


@pytest.mark.parametrize("layout", ["saved", "in-memory", "first-release"])
@pytest.mark.parametrize("size", SIZES)
def test_transformers_folder_matches_transformers(hf_pixio, tmp_path, layout, size):
    folder = tmp_path / "hf"
    hf_pixio.save_pretrained(folder)
    if layout == "in-memory":  # layers.{i}.attention.q_proj, ...
        save_file({k: v.contiguous() for k, v in hf_pixio.state_dict().items()}, str(folder / "model.safetensors"))
    if layout == "first-release":
        save_file(first_release_state_dict(hf_pixio), str(folder / "model.safetensors"))
    enc = load_encoder(folder)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = hf_pixio(pixel_values=x, output_hidden_states=True)
        assert (enc(x) - ref.last_hidden_state).abs().max() <= TOL
        assert (enc.global_embedding(x) - ref.pooler_output).abs().max() <= TOL
        # hidden_states[k] is block k-1's output before the final norm
        got = enc.features(x, 1, norm=False, raw=True)[0]
        raw = torch.cat([got.cls_raw, got.patches_raw.flatten(1, 2)], 1)
        assert (raw - ref.hidden_states[2]).abs().max() <= TOL


def test_dense_features_are_normed_patches_with_mean_class_token(hf_pixio, official_pth):
    enc = load_encoder(official_pth, num_heads=4)  # heads are not in the weights
    x = torch.randn(1, 3, 320, 224)
    with torch.no_grad():
        ref = hf_pixio(pixel_values=x, output_hidden_states=True)
        taps = enc.dense_features(x)
    assert enc.dense_block_indices() == [0, 1, 2, 3]
    for block, tap in zip(enc.dense_block_indices(), taps, strict=True):
        normed = hf_pixio.layernorm(ref.hidden_states[block + 1])
        assert tap.shape == (1, 20, 14, 128)
        assert (tap[..., :64] - normed[:, 8:].reshape(1, 20, 14, 64)).abs().max() <= TOL
        assert (tap[0, 5, 7, 64:] - normed[0, :8].mean(0)).abs().max() <= TOL


def test_project_format_round_trip(official_pth, tmp_path):
    from pixio_robot import save_encoder

    enc = load_encoder(official_pth, num_heads=4)  # heads are not in the weights
    out = save_encoder(enc, tmp_path / "enc.safetensors")
    again = load_encoder(out)
    assert again.config == enc.config
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.equal(enc(x), again(x))
