"""Broken, mismatched and hostile checkpoints give one clear line and change nothing."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from pixio_robot import PixioError, create_encoder, load_encoder, save_encoder
from pixio_robot.checkpoints import to_official_layout
from pixio_robot.cli import main


@pytest.fixture(scope="module")
def official_state():
    torch.manual_seed(0)
    model = create_encoder("vitn16")
    return to_official_layout(model.state_dict())


def write_pth(path, state):
    torch.save(state, path)
    return path


def test_official_layout_with_decoder_keys_loads_the_encoder(official_state, tmp_path):
    state = dict(official_state) | {"decoder_embed.weight": torch.zeros(2, 2), "mask_token": torch.zeros(1, 1, 2)}
    model = load_encoder(write_pth(tmp_path / "full.pth", {"model": state, "epoch": 3}))
    assert model.config["depth"] == 6 and model.config["n_cls_tokens"] == 8


def test_missing_keys_are_named(official_state, tmp_path):
    state = {k: v for k, v in official_state.items() if not k.startswith("blocks.2.mlp")}
    with pytest.raises(PixioError, match=r"4 missing \(blocks\.2\.mlp\.fc1\.weight"):
        load_encoder(write_pth(tmp_path / "x.pth", state))


def test_unexpected_keys_are_named(official_state, tmp_path):
    state = dict(official_state) | {"head.weight": torch.zeros(10, 128)}
    with pytest.raises(PixioError, match=r"1 unexpected \(head\.weight\)"):
        load_encoder(write_pth(tmp_path / "x.pth", state))


def test_wrong_size_names_the_size_it_looks_like(official_state, tmp_path):
    with pytest.raises(PixioError, match=r"wrongly shaped .*look like pixio_vitn16 \(embed_dim 128, 6 blocks\)"):
        load_encoder(write_pth(tmp_path / "x.pth", official_state), size="vitt16")


def test_not_a_pixio_checkpoint(tmp_path):
    with pytest.raises(PixioError, match="no Pixio encoder weights found"):
        load_encoder(write_pth(tmp_path / "resnet.pth", {"conv1.weight": torch.zeros(3)}))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_files(official_state, tmp_path, suffix):
    path = tmp_path / f"x{suffix}"
    if suffix == ".pth":
        write_pth(path, official_state)
    else:
        save_file({k: v.contiguous() for k, v in official_state.items()}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PixioError, match="truncated or corrupt"):
        load_encoder(path)


class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    Exploit.marker = marker
    path = tmp_path / "evil.pth"
    torch.save({"cls_token": torch.zeros(1, 8, 4), "payload": Exploit()}, path)
    with pytest.raises(PixioError, match="refused: the file needs arbitrary unpickling"):
        load_encoder(path)
    assert not marker.exists()


def test_convert_command_and_failed_convert_changes_nothing(official_state, tmp_path, capsys):
    src = write_pth(tmp_path / "pixio_vitn16.pth", official_state)
    out = tmp_path / "out.safetensors"
    assert main(["convert", str(src), f"out={out}"]) == 0
    reference = create_encoder("vitn16")
    reference.load_state_dict(load_encoder(out).state_dict())
    assert torch.equal(reference.pos_embed, official_state["pos_embed"])
    before = out.read_bytes()
    broken = tmp_path / "broken.pth"
    broken.write_bytes(src.read_bytes()[:1000])
    assert main(["convert", str(broken), f"out={out}", "overwrite=true"]) == 2
    err = capsys.readouterr().err
    assert "truncated or corrupt" in err and len(err.strip().splitlines()) == 1
    assert out.read_bytes() == before
    assert main(["info", str(out)]) == 0
    assert '"embed_dim": 128' in capsys.readouterr().out


def test_save_encoder_needs_safetensors_name(tmp_path):
    with pytest.raises(PixioError, match=r"\.safetensors"):
        save_encoder(create_encoder("vitn16"), tmp_path / "x.pth")


def test_empty_pth_is_named(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    with pytest.raises(PixioError, match=r"empty\.pth: empty file \(0 bytes\)"):
        load_encoder(path)


def test_unnamed_width_without_config_needs_num_heads(tmp_path):
    torch.manual_seed(0)
    model = create_encoder("vitn16", embed_dim=96, num_heads=3, depth=2)
    path = write_pth(tmp_path / "w96.pth", to_official_layout(model.state_dict()))
    with pytest.raises(PixioError, match=r"width 96 is none of the named sizes.*pass num_heads="):
        load_encoder(path)
    loaded = load_encoder(path, num_heads=3)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)
    out = tmp_path / "w96.safetensors"
    assert main(["convert", str(path), f"out={out}"]) == 2 and not out.exists()
    assert main(["convert", str(path), f"out={out}", "num_heads=3"]) == 0
    assert load_encoder(out).config["num_heads"] == 3  # the project format keeps it


@pytest.mark.parametrize("bad", ["cls_token", "blocks.3.norm1.weight", "blocks.1.mlp.fc1.weight"])
def test_one_misshaped_tensor_is_the_one_reported(official_state, tmp_path, bad):
    state = dict(official_state)
    t = state[bad]
    state[bad] = (
        torch.zeros(*t.shape[:-1], t.shape[-1] + 4) if bad == "cls_token" else torch.zeros(t.shape[0] + 4, *t.shape[1:])
    )
    # the class tokens are split in two tensors (cls_token + reg_token) in timm's layout
    count = 2 if bad == "cls_token" else 1
    with pytest.raises(PixioError, match=rf"{count} wrongly shaped \({bad}.*embed_dim 128, 6 blocks"):
        load_encoder(write_pth(tmp_path / "x.pth", state))
