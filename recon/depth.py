"""`pixio-robot train-depth` and `eval-depth`: monocular metric depth on a frozen encoder
(docs/DESIGN.md section 7), trained on RGB-D captures.

    pixio-robot train-depth data=[captures/train] encoder=sim_vitn16 out=runs/depth
    pixio-robot eval-depth checkpoint=runs/depth/model.safetensors data=[captures/test]

Depth lives in `recon/` because it is the single-view case of the same problem: it reads the
same capture folders (`data.load_scenes`, which also reads NYUv2-style lists for depth), caches
the encoder's taps with the same token cache and writes points through the same `.ply` and Rerun
writers. The loop, checkpoints and logs are the core's harness; the same command again
continues a run. The run folder holds `model.safetensors` (the
head; its header records the config, the image size and the encoder's path and SHA-256),
`checkpoints/step-*.pt`, `config.json`, `metrics.csv`, `metrics.rrd` and, for a
random-initialised encoder, `encoder.safetensors`.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

from pixio_robot.atomic import run_folder, write_json
from pixio_robot.bundled import resolve_weights
from pixio_robot.config import to_dict
from pixio_robot.devices import pick_device, torch_threads
from pixio_robot.encoder import PixioViT
from pixio_robot.errors import PixioError
from pixio_robot.harness import Run, WarmupCosine, list_checkpoints, param_groups, resume_checkpoint

from .backbone import prepare_encoder, resolve_encoder
from .commands import DepthCommandConfig, EvalDepthConfig, TrainDepthConfig
from .data import load_scenes, size_pair
from .losses import silog_loss
from .metrics import DEPTH_METRICS, depth_metrics
from .modeling_depth import DepthHead
from .tokens import TokenCache, default_cache_dir

MODEL = "model.safetensors"
# Options a resumed run may change; everything else must match the saved run.
RESUMABLE = {"steps", "save_every", "log_every", "progress", "device", "threads", "cache_dir", "out", "lr"}


def _views(scenes, encoder, sha: str, size, device, taps: list[int], cache_dir=None, progress=False):
    """(taps (N, T, h, w, C) of every view, depth z (N, H, W), 0 where unknown)."""
    from tqdm import tqdm

    cache = TokenCache(encoder, sha, size, cache_dir or default_cache_dir(), device=device, taps=taps)
    bar = dict(desc="taps", unit="scene", disable=not progress, file=sys.stderr)
    features = torch.cat([cache.tokens(s) for s in tqdm(scenes, **bar)])
    depth = torch.from_numpy(np.concatenate([s.depth for s in scenes])).float()
    return features, depth


def load_depth_model(checkpoint) -> tuple[DepthHead, PixioViT, str, tuple[int, int]]:
    """(head, its frozen encoder, the encoder's SHA-256, image size) of a train-depth run's
    model.safetensors or of a bundled head's name (e.g. depth_sim_vitn16, SHA-256 checked)."""
    checkpoint = resolve_weights(checkpoint)
    head, meta = DepthHead.load(checkpoint)
    encoder, sha = resolve_encoder(meta["encoder"], checkpoint)
    return head, encoder, sha, size_pair(meta["image_size"])


def tap_blocks(encoder, config) -> list[int]:
    """The encoder blocks a depth head reads: `depth.blocks` if given, else the official rule."""
    if config.blocks is not None:
        return encoder.block_indices(config.blocks)  # refuses blocks the encoder lacks, naming its range
    return encoder.dense_block_indices() if config.head == "dpt" else [len(encoder.blocks) - 1]


def _loss_mask(depth: torch.Tensor, config) -> torch.Tensor:
    return (depth >= config.min_depth) & (depth <= config.max_depth)


# ---- train-depth ------------------------------------------------------------------------------


def run_train(cfg: TrainDepthConfig) -> int:
    with torch_threads(cfg.threads):
        return _train(cfg)


def _train(cfg: TrainDepthConfig) -> int:
    size = size_pair(cfg.image_size)
    if size[0] % 16 or cfg.steps < 1 or cfg.batch_size < 1 or cfg.save_every < 1:
        raise PixioError("image_size must be a multiple of 16; steps, batch_size and save_every at least 1")
    cfg.depth.check()
    out = Path(cfg.out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "config.json").is_file())):
        raise PixioError(f"out={out} holds something other than a depth run: choose another out= (nothing changed)")
    device = pick_device(cfg.device)
    scenes = load_scenes(cfg.data, size, geometry=True, limit=cfg.scenes, progress=cfg.progress, cameras=False)
    with run_folder(out):  # a refused run leaves no folder behind (a random encoder is drawn into it)
        encoder, info = prepare_encoder(cfg.encoder, cfg.encoder_init, cfg.encoder_seed, out, size)
        config = to_dict(cfg) | {"encoder_sha256": info["sha256"]}
        ckpt = resume_checkpoint(out, config, RESUMABLE, "choose another out=") if list_checkpoints(out) else None
        taps = tap_blocks(encoder, cfg.depth)
    features, depth = _views(scenes, encoder, info["sha256"], size, device, taps, cfg.cache_dir, cfg.progress)
    if not bool(_loss_mask(depth, cfg.depth).any()):
        raise PixioError(f"no valid depth in {', '.join(cfg.data)} between depth.min_depth and depth.max_depth")
    torch.manual_seed(cfg.seed)
    head = DepthHead(cfg.depth, features.shape[-1]).to(device)
    meta = {"train_config": to_dict(cfg), "encoder": info, "image_size": list(size), "views": len(depth)}
    write_json(out / "config.json", meta)
    gen = torch.Generator()

    def step_fn(step: int) -> tuple[float, dict]:
        gen.manual_seed(cfg.seed * 1_000_003 + step)  # a resumed run draws the same views
        idx = torch.randint(0, len(depth), (cfg.batch_size,), generator=gen)
        target = depth[idx].to(device)
        valid = _loss_mask(target, cfg.depth)
        loss = silog_loss(head(features[idx].to(device), size), target.clamp(min=cfg.depth.min_depth), valid)
        if torch.isfinite(loss):
            loss.backward()
        return loss.item(), {}

    run = Run(
        kind="train-depth",
        run_dir=out,
        config=config,
        model=head,
        optimizer=torch.optim.AdamW(param_groups(head, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999)),
        schedule=WarmupCosine(cfg.lr, cfg.warmup_steps, cfg.steps),
        total=cfg.steps,
        step_fn=step_fn,
        samples_per_step=cfg.batch_size,
        log_every=cfg.log_every,
        save_every=cfg.save_every,
        advice=f"resume with a lower lr= (e.g. lr={cfg.lr / 3:.2g}) and the same out=",
        export=lambda step: head.save(out / MODEL, meta | {"step": step}),
        progress=cfg.progress,
    )
    run.fit(ckpt, "pixio_robot_train_depth")
    print(f"{out}: {cfg.steps} steps; head in {out / MODEL} (evaluate: pixio-robot eval-depth checkpoint=...)")
    return 0


# ---- eval-depth -------------------------------------------------------------------------------


def evaluate_depth(checkpoint, data, scenes: int | None = None, cache_dir=None, device="auto", progress=False) -> dict:
    """The official metrics of a depth head on held-out scenes: each metric per view over its
    valid pixels, then the mean over views (as eval_depth averages per image); plus "views"."""
    head, encoder, sha, size = load_depth_model(checkpoint)
    loaded = load_scenes(data, size, geometry=True, limit=scenes, progress=progress, cameras=False)
    dev = pick_device(device)
    features, depth = _views(loaded, encoder, sha, size, dev, tap_blocks(encoder, head.config), cache_dir, progress)
    head = head.to(dev)
    with torch.no_grad():
        pred = torch.cat([head(features[i : i + 8].to(dev), size).cpu() for i in range(0, len(depth), 8)])
    return score_depth(pred.numpy(), depth.numpy(), head.config)


def score_depth(pred: np.ndarray, gt: np.ndarray, config) -> dict:
    """The official metrics of predictions (N, H, W) against depth (N, H, W), over the pixels with
    config.min_depth <= d <= config.max_depth: per view, then the mean over views with any."""
    rows = [depth_metrics(p, g, _loss_mask(torch.from_numpy(g), config).numpy()) for p, g in zip(pred, gt, strict=True)]
    values = {k: np.array([r[k] for r in rows]) for k in DEPTH_METRICS}
    result = {k: float(np.nanmean(v)) if np.isfinite(v).any() else math.nan for k, v in values.items()}
    return result | {"views": int(sum(np.isfinite(values["d1"])))}


def run_eval(cfg: EvalDepthConfig) -> int:
    if cfg.out and Path(cfg.out).exists() and not cfg.overwrite:
        raise PixioError(f"{cfg.out} exists: pass overwrite=true to replace it, or choose another out=")
    with torch_threads(cfg.threads):
        result = evaluate_depth(cfg.checkpoint, cfg.data, cfg.scenes, cfg.cache_dir, cfg.device, cfg.progress)
    print("| views | " + " | ".join(DEPTH_METRICS) + " |")
    print("|---" * (len(DEPTH_METRICS) + 1) + "|")
    print(f"| {result['views']} | " + " | ".join(f"{result[k]:.4f}" for k in DEPTH_METRICS) + " |")
    if cfg.out:
        write_json(
            Path(cfg.out), {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in result.items()}
        )
    return 0


# ---- depth IMAGES -----------------------------------------------------------------------------


def predict_depth(
    checkpoint, images: list[np.ndarray], device="auto", names: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(images resized to the head's size (N, H, W, 3) uint8, depth z in metres (N, H, W)).
    `checkpoint`: what `load_depth_model` takes, or what it returned (not loaded again)."""
    from .data import check_image_sides, resize_view

    head, encoder, sha, size = checkpoint if isinstance(checkpoint, tuple) else load_depth_model(checkpoint)
    for i, im in enumerate(images):
        check_image_sides(names[i] if names else f"image {i}", np.shape(im), size)
    dev = pick_device(device)
    cache = TokenCache(encoder, sha, size, None, device=dev, taps=tap_blocks(encoder, head.config))
    resized = np.stack([resize_view(im, None, None, size)[0] for im in images])
    with torch.no_grad():
        depth = torch.cat(
            [head.to(dev)(cache.encode(resized[i : i + 8]).to(dev), size).cpu() for i in range(0, len(resized), 8)]
        )
    return resized, depth.numpy()


def run_depth(cfg: DepthCommandConfig) -> int:
    from pixio_robot.images import colorize, list_images, read_image, save_png

    from .data import resize_view
    from .infer import _read_intrinsics

    if not cfg.images:
        raise PixioError("no images given: pixio-robot depth IMAGES... checkpoint=model.safetensors")
    paths, out = list_images(cfg.images), Path(cfg.out)
    K = None if cfg.intrinsics is None else _read_intrinsics(cfg.intrinsics)
    if K is not None and K.shape != (3, 3):
        raise PixioError(f"intrinsics={cfg.intrinsics}: K has shape {K.shape}, expected (3, 3) for the images")
    suffixes = ("_depth.png", "_color.png") + ((".ply", ".rrd") if K is not None else ())
    files = [out / f"{p.stem}{s}" for p in paths for s in suffixes]
    if not cfg.overwrite and (existing := [f for f in files if f.exists()]):
        raise PixioError(f"{existing[0]} exists: pass overwrite=true to replace it, or choose another out=")
    originals = [read_image(p) for p in paths]
    with torch_threads(cfg.threads):
        images, depth = predict_depth(cfg.checkpoint, originals, cfg.device, [str(p) for p in paths])
    out.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(paths):
        write_depth_png(out / f"{p.stem}_depth.png", depth[i])
        save_png(out / f"{p.stem}_color.png", colorize(depth[i]))
        if K is not None:
            k = resize_view(originals[i], None, K, images.shape[1:3])[2]  # K at the head's resolution
            rec = depth_reconstruction(images[i : i + 1], depth[i : i + 1], k[None])
            rec.save_ply(out / f"{p.stem}.ply", conf_percentile=0)
            rec.save_rrd(out / f"{p.stem}.rrd", conf_percentile=0)
    print(f"{len(paths)} image(s) -> depth at {images.shape[1]}x{images.shape[2]} in {out}/ ({', '.join(suffixes)})")
    return 0


def write_depth_png(path: str | os.PathLike, depth: np.ndarray) -> None:
    """Depth z in metres as a 16-bit greyscale PNG in millimetres (0 = none), written atomically."""
    import io

    from PIL import Image

    from pixio_robot.atomic import write_bytes

    buf = io.BytesIO()
    Image.fromarray(np.round(depth * 1000).clip(0, 65535).astype(np.uint16)).save(buf, format="PNG")
    write_bytes(path, buf.getvalue())


def depth_reconstruction(images: np.ndarray, depth: np.ndarray, K: np.ndarray, cam2world: np.ndarray | None = None):
    """Views (V, H, W, 3) with depth z (V, H, W) and intrinsics K (V, 3, 3) at that resolution
    as a `Reconstruction` placed by `cam2world` (V, 4, 4; identity: each in its camera frame),
    so that recon's .ply and .rrd writers serve depth too."""
    from .geometry import camera_points, rays_from_intrinsics, z_to_depth_along_ray
    from .infer import Reconstruction

    v, h, w = depth.shape
    cam2world = np.repeat(np.eye(4)[None], v, axis=0) if cam2world is None else np.asarray(cam2world, np.float64)
    points = []
    for k, d, pose in zip(K, depth, cam2world, strict=True):
        rays = rays_from_intrinsics(torch.as_tensor(k, dtype=torch.float64), h, w)
        local = camera_points(rays, z_to_depth_along_ray(torch.as_tensor(d, dtype=torch.float64), rays)).numpy()
        points.append(local @ pose[:3, :3].T + pose[:3, 3])
    return Reconstruction(
        images=np.asarray(images),
        points=np.stack(points).astype(np.float32),
        conf=np.ones((v, h, w), np.float32),
        mask=depth > 0,
        depth=depth,
        cam2world=cam2world,
        K=np.asarray(K, np.float64),
        scale=1.0,
    )
