"""`pixio-robot pretrain-view` (what the model reconstructs) and `pixio-robot pretrain-export`.

The view shows, per image, four panels side by side: the input, the visible patches (masked
cells grey), the prediction (the predicted pixels of the masked patches; with norm_pix_loss
each predicted patch is put back to its true patch's mean and variance, as MAE's figures
do) and the target (the true pixels of the masked patches). It writes a PNG grid and a Rerun
recording with the same panels and each image's loss.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pixio_robot.checkpoints import save_encoder
from pixio_robot.devices import pick_device
from pixio_robot.encoder import IMAGENET_MEAN, IMAGENET_STD
from pixio_robot.errors import PixioError
from pixio_robot.images import image_grid, list_images, read_image, save_png
from pixio_robot.viz import rerun_recording

from .checkpointing import load_trained
from .commands import ExportConfig, ReconstructConfig
from .data import center_square, to_model_input
from .modeling_pixio import PixioPretrainModel, gather_tokens, patchify, unpatchify

PANELS = ("input", "visible", "prediction", "target")


def _check_out(path: Path, overwrite: bool, suffix: str) -> None:
    if path.suffix != suffix:
        raise PixioError(f"out={path}: name the output *{suffix}")
    if path.exists() and not overwrite:
        raise PixioError(f"{path} exists: pass overwrite=true to replace it, or choose another out=")


def run_export(cfg: ExportConfig) -> int:
    out = Path(cfg.out)
    _check_out(out, cfg.overwrite, ".safetensors")
    ckpt, model = load_trained(cfg.checkpoint)
    meta = {
        "trained_by": f"pixio-robot {ckpt['kind']}",
        "step": str(ckpt["step"]),
        "checkpoint": Path(ckpt["path"]).name,
    }
    save_encoder(model.encoder, out, metadata=meta)
    print(f"wrote {out}: the encoder of {ckpt['path']} (step {ckpt['step']})")
    return 0


@torch.no_grad()
def reconstruct(model: PixioPretrainModel, images: list[np.ndarray], seed: int = 0, device="cpu") -> dict:
    """Panels (uint8 (n, S, S, 3) each) and per-image losses for square uint8 images."""
    device = torch.device(device)
    model = model.to(device)
    x = to_model_input(torch.from_numpy(np.stack(images)), device)
    noise = model.random_noise(len(images), generator=torch.Generator().manual_seed(seed)).to(device)
    out = model(x, noise)
    p, (h, w) = model.patch_size, model.grid_size
    true = patchify(x, p)  # normalised image space
    target = model.targets(x, out.ids_mask)
    loss = ((out.pred.float() - target) ** 2).mean(dim=(1, 2))
    pred = out.pred.float()
    masked_true = gather_tokens(true, out.ids_mask)
    if model.cfg.norm_pix_loss:  # back to each true patch's own mean and spread
        mean, var = masked_true.mean(-1, keepdim=True), masked_true.var(-1, keepdim=True)
        pred = pred * (var + 1e-6).sqrt() + mean
    grey = _normalised_grey(p, device).expand_as(true)
    mask = torch.zeros(true.shape[:2], dtype=torch.bool, device=device).scatter(1, out.ids_mask, True)[..., None]
    predicted = grey.scatter(1, out.ids_mask[..., None].expand_as(pred), pred)
    panels = {
        "input": true,
        "visible": torch.where(mask, grey, true),
        "prediction": predicted,
        "target": torch.where(mask, true, grey),
    }
    return {"panels": {k: _to_uint8(unpatchify(v, p, h, w)) for k, v in panels.items()}, "loss": loss.cpu()}


def _normalised_grey(p: int, device) -> torch.Tensor:
    mean, std = torch.tensor(IMAGENET_MEAN, device=device), torch.tensor(IMAGENET_STD, device=device)
    grey = (0.5 - mean) / std  # mid-grey in the normalised space, per channel
    return grey.repeat(p * p)[None, None]  # one patch, pixels in (row, column, channel) order


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    img = (x * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
    return img.permute(0, 2, 3, 1).cpu().numpy()


def run_view(cfg: ReconstructConfig) -> int:
    import rerun as rr

    out = Path(cfg.out)
    rrd = out.with_suffix(".rrd")
    _check_out(out, cfg.overwrite, ".png")
    if rrd.exists() and not cfg.overwrite:
        raise PixioError(f"{rrd} exists: pass overwrite=true to replace it, or choose another out=")
    if not cfg.images:
        raise PixioError("no images given: pixio-robot pretrain-view IMAGES_OR_FOLDERS checkpoint=RUN_DIR")
    if cfg.n < 1:
        raise PixioError(f"n={cfg.n} must be at least 1")
    ckpt, model = load_trained(cfg.checkpoint)
    if ckpt["kind"] != "pretrain":
        raise PixioError(f"{ckpt['path']} is a {ckpt['kind']} checkpoint: pretrain-view needs a pretrain one")
    from PIL import Image

    size = model.cfg.image_size
    paths = list_images(cfg.images)[: cfg.n]
    images = [center_square(Image.fromarray(read_image(p)), size) for p in paths]
    result = reconstruct(model, images, cfg.seed, pick_device(cfg.device))
    rows = [[result["panels"][k][i] for k in PANELS] for i in range(len(images))]
    save_png(out, image_grid(rows, labels=list(PANELS)))
    with rerun_recording(rrd, application_id="pixio_robot_pretrain_view") as rec:
        for i, path in enumerate(paths):
            for k in PANELS:
                rec.log(f"reconstruction/{i}/{k}", rr.Image(result["panels"][k][i]), static=True)
            rec.log(
                f"reconstruction/{i}/loss", rr.TextDocument(f"{path.name}: loss {result['loss'][i]:.4f}"), static=True
            )
    losses = ", ".join(f"{v:.3f}" for v in result["loss"].tolist())
    print(f"wrote {out} and {rrd} ({len(images)} images, step {ckpt['step']}; losses {losses})")
    return 0
