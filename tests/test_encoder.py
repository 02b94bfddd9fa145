"""The encoder's features API, preprocessing, registry and CLI on small random models."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors import safe_open

import pixio_robot
from pixio_robot import PixioError, Preprocess, create_encoder, load_encoder
from pixio_robot.cli import main


@pytest.fixture(scope="module")
def enc():
    torch.manual_seed(0)
    return create_encoder("vitn16").eval()


def test_released_sizes_have_the_published_parameter_counts():
    expected = {"vitb16": 86, "vitl16": 303, "vith16": 631}
    for name, millions in expected.items():
        with torch.device("meta"):
            model = create_encoder(name)
        assert round(sum(p.numel() for p in model.parameters()) / 1e6) == millions


def test_timm_registry_builds_pixio(enc):
    model = timm.create_model("pixio_vitn16", n_cls_tokens=4)
    assert model.num_prefix_tokens == 4 and isinstance(model, pixio_robot.PixioViT)
    with pytest.raises(PixioError, match="downloads nothing"):
        timm.create_model("pixio_vitn16", pretrained=True)


def test_features_only_runs_and_norms_what_is_asked(enc):
    x = torch.randn(2, 3, 64, 96)
    calls = []
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: calls.append(k)) for k, b in enumerate(enc.blocks)]
    norm_inputs = []
    hooks.append(enc.norm.register_forward_hook(lambda m, i, o: norm_inputs.append(i[0].shape)))
    with torch.no_grad():
        out = enc.features(x, [2, 1], patches=False)
    for h in hooks:
        h.remove()
    assert calls == [0, 1, 2]  # stops after the deepest requested block
    assert norm_inputs == [(2, 8, 128), (2, 8, 128)]  # class tokens only, requested blocks only
    assert [t.block for t in out] == [2, 1] and out[0].patches is None and out[0].cls.shape == (2, 8, 128)


def test_features_agree_with_forward(enc):
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        tokens = enc(x)
        last = enc.features(x, -1)[0]
        knn = enc.knn_embedding(x)
    assert tokens.shape == (2, 8 + 4 * 6, 128)
    assert torch.allclose(tokens[:, :8], last.cls) and torch.allclose(tokens[:, 8:].reshape(2, 4, 6, 128), last.patches)
    assert torch.allclose(enc.global_embedding(x), tokens[:, :8].mean(1))
    assert torch.allclose(knn.norm(dim=-1), torch.ones(2))


def test_any_number_of_class_tokens():
    model = create_encoder("vitn16", n_cls_tokens=1).eval()
    assert model.reg_token is None
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1 + 4, 128)


def test_preprocess_accepts_every_input_kind_alike(rng):
    img = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    pre = Preprocess(32)
    a = pre(img)
    b = pre(Image.fromarray(img))
    c = pre(torch.from_numpy(img).permute(2, 0, 1).float() / 255)
    d = pre(np.stack([img, img]))
    e = pre([img, Image.fromarray(img)])
    assert a.shape == (1, 3, 32, 32) and d.shape == e.shape == (2, 3, 32, 32)
    for other in (b, c, d[1:], e[:1]):
        assert torch.allclose(a, other, atol=1e-5)
    assert Preprocess(None)(img).shape == (1, 3, 48, 64)  # nearest multiples of 16


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((32, 32, 4), np.uint8), "channel"),
        (np.zeros((32, 32), np.uint8), "channel"),
        (torch.full((3, 32, 32), float("nan")), "NaN"),
        (torch.zeros(1, 32, 32, 3), "channels-last"),
        (torch.full((3, 32, 32), 255.0), r"\[0, 1\]"),
        ("image.png", "cannot read an image"),
    ],
)
def test_preprocess_rejects_bad_images(bad, message):
    with pytest.raises(PixioError, match=message):
        Preprocess(32)(bad)


def test_sides_must_be_multiples_of_16(enc):
    with pytest.raises(PixioError, match="not a multiple of the patch size 16"):
        enc(torch.randn(1, 3, 50, 64))
    with pytest.raises(PixioError, match="multiples of the patch size"):
        Preprocess((50, 64))
    with pytest.raises(PixioError, match=r"\(B, 3, H, W\)"):
        enc(torch.randn(1, 4, 64, 64))


def test_unnormalised_or_nan_images_are_refused(enc):
    with pytest.raises(PixioError, match="normalised float images, got torch.uint8.*Preprocess"):
        enc(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    x = torch.randn(1, 3, 32, 32)
    x[0, 1, 5, 5] = float("nan")
    for call in (enc, enc.global_embedding, lambda x: enc.features(x, -1)):
        with pytest.raises(PixioError, match="NaN or infinite"):
            call(x)


def test_encoder_with_nan_weights_is_refused_before_any_output(enc, image_folder, tmp_path, capsys):
    from pixio_robot import save_encoder

    broken = create_encoder("vitn16")
    with torch.no_grad():
        broken.blocks[2].mlp.fc1.weight[0, 0] = float("nan")
    ckpt = save_encoder(broken, tmp_path / "diverged.safetensors")
    with pytest.raises(PixioError, match=r"1 tensor\(s\) hold NaN or infinite values \(blocks.2.mlp.fc1.weight\)"):
        load_encoder(ckpt)
    out = tmp_path / "feats.safetensors"
    assert main(["features", str(image_folder), f"checkpoint={ckpt}", f"out={out}", "size=32"]) == 2
    assert "NaN" in capsys.readouterr().err and not out.exists()


def test_unknown_size_and_block(enc):
    with pytest.raises(PixioError, match="unknown encoder size"):
        create_encoder("vitz16")
    with pytest.raises(PixioError, match="block 6 does not exist"):
        enc.features(torch.randn(1, 3, 32, 32), 6)


@pytest.fixture
def image_folder(tmp_path, rng):
    folder = tmp_path / "imgs"
    (folder / "nested").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40 + 8 * i, 50, 3), dtype=np.uint8)).save(folder / "nested" / f"{i}.png")
    Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(folder / "a.jpg")
    return folder


def test_features_command_matches_the_api(image_folder, tmp_path, enc):
    from pixio_robot import save_encoder
    from pixio_robot.images import list_images, read_image

    ckpt = save_encoder(enc, tmp_path / "enc.safetensors")
    out = tmp_path / "feats.safetensors"
    assert (
        main(["features", str(image_folder), f"checkpoint={ckpt}", "--out", str(out), "size=32", "blocks=[1,-1]"]) == 0
    )
    with safe_open(str(out), "pt") as f:
        feats = {k: f.get_tensor(k) for k in f.keys()}
    assert feats["global"].shape == (4, 128) and feats["patches.block5"].shape == (4, 2, 2, 128)
    assert set(feats) == {"global", "cls.block1", "cls.block5", "patches.block1", "patches.block5"}
    paths = list_images(image_folder)
    x = Preprocess(32)([read_image(p) for p in paths])
    with torch.no_grad():
        assert torch.allclose(feats["global"], enc.global_embedding(x), atol=1e-5)


def test_failed_commands_leave_files_alone(image_folder, tmp_path, capsys):
    out = tmp_path / "feats.safetensors"
    out.write_bytes(b"precious")
    assert main(["features", str(image_folder), "checkpoint=vitn16", f"out={out}"]) == 2
    assert "exists" in capsys.readouterr().err
    (image_folder / "broken.png").write_bytes(b"\x89PNG not really")
    fresh = tmp_path / "fresh.safetensors"
    assert main(["features", str(image_folder), "checkpoint=vitn16", f"out={fresh}", "size=32"]) == 2
    err = capsys.readouterr().err
    assert "broken.png: not a readable image" in err.splitlines()[-1] and "Traceback" not in err
    assert out.read_bytes() == b"precious" and not fresh.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_empty_folder_and_missing_options(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["features", str(tmp_path / "empty"), "checkpoint=vitn16"]) == 2
    assert "no images" in capsys.readouterr().err
    assert main(["features", str(tmp_path)]) == 2
    assert "checkpoint is required" in capsys.readouterr().err
    assert main(["features", "checkpoint=vitn16", "batchsize=3"]) == 2
    assert "unknown option 'batchsize'" in capsys.readouterr().err


def test_load_encoder_by_size_name():
    model = load_encoder("pixio_vitn16")
    assert model.config["embed_dim"] == 128
    with pytest.raises(PixioError, match="no such checkpoint"):
        load_encoder("does/not/exist.pth")
