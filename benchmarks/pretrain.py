"""Pre-training throughput: pixio-robot's training step against lightly's Pixio.

The same model on both sides: ViT-S/16 encoder with 8 class tokens at 256x256, 4x4-patch
masking cells with 75% masked, a 512-d decoder of 8 or 32 blocks (16 heads), per-patch
normalised pixel MSE on the masked patches; the same batch of images; the same optimizer
(AdamW (0.9, 0.95), weight decay 0.05, PyTorch's fused kernel) on both sides, so the figures
compare the model code. lightly's side is built as in its MAE/Pixio examples:
`MaskedVisionTransformerTIMM` + `PixioDecoderTIMM` + `random_grid_token_mask` (its decoder's
positional embedding is fixed sin-cos where Pixio's is learned; nothing else differs).

A training step = forward under autocast (bfloat16, the recipe's precision) or in float32,
backward, optimizer step. The models run alternately in one process; each figure is the
best of the timed steps. A last row shows lightly with timm's math attention, the kernel
choice behind most of the bfloat16 gain (see `set_attention` in pretrain/modeling_pixio.py).

    uv run python benchmarks/pretrain.py [--batch 16] [--reps 5] [--decoders 8 32] [--dtypes bfloat16 float32]
    uv run python benchmarks/pretrain.py --threads 1 --cpu-time     # on a machine shared with other jobs
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import warnings
from functools import partial
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would hide the
# `pretrain` package: put the repository root there instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from pretrain.configuration_pixio import ModelConfig, OptimConfig  # noqa: E402
from pretrain.modeling_pixio import PixioPretrainModel, set_attention  # noqa: E402
from pretrain.optim import make_optimizer  # noqa: E402


class LightlyPixio(nn.Module):
    """lightly's Pixio: its masked ViT (timm backbone), Pixio decoder and grid token mask."""

    def __init__(self, image_size: int, decoder_depth: int, mask_ratio: float = 0.75, grid: int = 4):
        super().__init__()
        import timm
        from lightly.models.modules import MaskedVisionTransformerTIMM, PixioDecoderTIMM

        vit = timm.create_model(
            "vit_small_patch16_224", img_size=image_size, num_classes=0, reg_tokens=7, global_pool=""
        )
        self.backbone = MaskedVisionTransformerTIMM(vit=vit, pos_embed_initialization="learn")
        self.n_prefix = vit.num_prefix_tokens
        self.sequence_length = self.backbone.sequence_length
        self.mask_ratio, self.grid = mask_ratio, grid
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PixioDecoderTIMM announces its successor class
            self.decoder = PixioDecoderTIMM(
                num_patches=vit.patch_embed.num_patches,
                patch_size=16,
                embed_dim=vit.embed_dim,
                decoder_embed_dim=512,
                decoder_depth=decoder_depth,
                decoder_num_heads=16,
                num_prefix_tokens=self.n_prefix,
            )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from lightly.models import utils

        b = images.shape[0]
        idx_keep, idx_mask = utils.random_grid_token_mask(
            (b, self.sequence_length), self.mask_ratio, self.grid, self.n_prefix, device=images.device
        )
        x = self.backbone.encode(images=images, idx_keep=idx_keep)
        x = self.decoder.embed(x)
        seq = utils.repeat_token(self.decoder.mask_token, (b, self.sequence_length))
        seq = utils.set_at_index(seq, idx_keep, x.type_as(seq))
        pred = self.decoder.predict(utils.get_at_index(self.decoder.decode(seq), idx_mask))
        target = utils.get_at_index(utils.patchify(images, 16), idx_mask - self.n_prefix)
        return F.mse_loss(pred.float(), utils.normalize_mean_var(target))


def train_step(model, optimizer, images, noise, dtype) -> None:
    with torch.autocast(images.device.type, dtype=dtype, enabled=dtype != torch.float32):
        loss = model(images, noise).loss if noise is not None else model(images)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def time_alternating(steps: dict, reps: int, clock=time.perf_counter) -> dict[str, float]:
    """Seconds per step, the candidates in turn each repetition (after one warm-up), the order
    rotated every repetition so that none always follows the same one (the step before leaves
    caches and the allocator in its own state). The best of the repetitions: on a shared
    machine other jobs only ever add time, and taking turns gives each candidate the same
    chances of a quiet moment."""
    for fn in steps.values():
        fn()
    names = list(steps)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(reps):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t = clock()
            steps[name]()
            times[name].append(clock() - t)
    return {k: min(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--image", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--decoders", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--no-peer-math", action="store_true", help="skip the lightly + math-attention row")
    ap.add_argument(
        "--cpu-time",
        action="store_true",
        help="time steps by the process's CPU time, not the wall clock: with --threads 1 this leaves out "
        "the time other jobs on a shared machine take the core away",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}; ViT-S/16, {args.image}x{args.image}, batch {args.batch}, "
        f"8 class tokens, 4x4 cells, 75% masked; {'CPU' if args.cpu_time else 'wall-clock'} time, best of {args.reps}"
    )
    print("| decoder | dtype | model | images/s | vs lightly |")
    print("|---|---|---|---|---|")
    for depth in args.decoders:
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            torch.manual_seed(0)
            ours = PixioPretrainModel(ModelConfig(encoder="vits16", image_size=args.image, decoder_depth=depth))
            attention = set_attention(ours, "auto", device, dtype)
            peer = LightlyPixio(args.image, depth)
            opt_ours = make_optimizer(ours, OptimConfig(), device)
            opt_peer = make_optimizer(peer, OptimConfig(), device)
            images = torch.randn(args.batch, 3, args.image, args.image)
            noise = torch.rand(args.batch, ours.num_cells)
            steps = {
                "lightly": partial(train_step, peer, opt_peer, images, None, dtype),
                "pixio_robot": partial(train_step, ours, opt_ours, images, noise, dtype),
            }
            if not args.no_peer_math and dtype == torch.bfloat16:
                steps["lightly, math attention"] = partial(_with_math, peer, opt_peer, images, dtype)
            secs = time_alternating(steps, args.reps, time.process_time if args.cpu_time else time.perf_counter)
            base = args.batch / secs["lightly"]
            for name, s in secs.items():
                label = f"pixio_robot ({attention} attention)" if name == "pixio_robot" else name
                rate = args.batch / s
                print(f"| 512x{depth} | {dtype_name} | {label} | {rate:.2f} | {rate / base:.2f}x |", flush=True)
            del ours, peer, opt_ours, opt_peer


def _with_math(model, optimizer, images, dtype) -> None:
    set_attention(model, "math", images.device, dtype)
    try:
        train_step(model, optimizer, images, None, dtype)
    finally:
        set_attention(model, "fused", images.device, dtype)


if __name__ == "__main__":
    main()
