"""Pre-training throughput: pixio-robot's training step against lightly's Pixio.

The same model on both sides: a Pixio encoder (ViT-S/16 unless `--encoder`) with 8 class
tokens at 256x256, 4x4-patch masking cells with 75% masked, a 512-d decoder of 8 or 32 blocks
(16 heads), per-patch normalised pixel MSE on the masked patches; the same batch of images; the same optimizer
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

On a GPU (issue 18's figures): the step's FLOPs are counted once by PyTorch's flop counter
(`torch.utils.flop_counter`, forward and backward) and set against `--peak-tflops` (the bf16
dense spec, 989 for H100/H200 SXM) as model-FLOPs utilisation; `--compile` adds a row with the
transformer blocks compiled (`run.compile=true`).

    python benchmarks/pretrain.py --device cuda --encoder vitl16 --batch 64 --decoders 32 --dtypes bfloat16 --compile
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

    def __init__(self, image_size: int, decoder_depth: int, size: str = "vits16", mask_ratio=0.75, grid: int = 4):
        super().__init__()
        from lightly.models.modules import MaskedVisionTransformerTIMM, PixioDecoderTIMM
        from timm.models.vision_transformer import VisionTransformer

        from pixio_robot.encoder import PIXIO_SIZES, canonical_size

        d, depth, heads = PIXIO_SIZES[canonical_size(size)]
        vit = VisionTransformer(
            img_size=image_size, embed_dim=d, depth=depth, num_heads=heads, num_classes=0, reg_tokens=7, global_pool=""
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


def step_flops(model, optimizer, images, noise, dtype) -> int:
    """FLOPs of one training step (forward and backward; the optimizer's are negligible), as
    PyTorch's flop counter counts them (matmuls and attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        train_step(model, optimizer, images, noise, dtype)
    return counter.get_total_flops()


def _synced(fn, device: torch.device):
    def run():
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return run


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
    ap.add_argument("--encoder", default="vits16", help="encoder size of both models (vits16, vitl16, vith16 ...)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--compile", action="store_true", help="add pixio_robot with compiled blocks (run.compile)")
    ap.add_argument(
        "--peak-tflops", type=float, help="bf16 dense peak for the MFU column (default on CUDA: 989, H100/H200 SXM)"
    )
    ap.add_argument(
        "--cpu-time",
        action="store_true",
        help="time steps by the process's CPU time, not the wall clock: with --threads 1 this leaves out "
        "the time other jobs on a shared machine take the core away",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    peak = args.peak_tflops or (989.0 if device.type == "cuda" else None)
    machine = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    print(
        f"# {machine}, {torch.get_num_threads()} threads, torch {torch.__version__}; {args.encoder}, "
        f"{args.image}x{args.image}, batch {args.batch}, 8 class tokens, 4x4 cells, 75% masked; "
        f"{'CPU' if args.cpu_time else 'wall-clock'} time, best of {args.reps}"
        + (f"; MFU against {peak:.0f} TFLOP/s" if peak else "")
    )
    print("| decoder | dtype | model | images/s | vs lightly | TFLOP per step | MFU |")
    print("|---|---|---|---|---|---|---|")
    for depth in args.decoders:
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            torch.manual_seed(0)
            ours = PixioPretrainModel(ModelConfig(encoder=args.encoder, image_size=args.image, decoder_depth=depth))
            ours = ours.to(device)
            attention = set_attention(ours, "auto", device, dtype)
            peer = LightlyPixio(args.image, depth, args.encoder).to(device)
            opt_ours = make_optimizer(ours, OptimConfig(), device)
            opt_peer = make_optimizer(peer, OptimConfig(), device)
            images = torch.randn(args.batch, 3, args.image, args.image, device=device)
            noise = torch.rand(args.batch, ours.num_cells, device=device)
            flops = step_flops(ours, opt_ours, images, noise, dtype)  # the same model on both sides
            steps = {
                "lightly": partial(train_step, peer, opt_peer, images, None, dtype),
                "pixio_robot": partial(train_step, ours, opt_ours, images, noise, dtype),
            }
            if not args.no_peer_math and dtype == torch.bfloat16:
                steps["lightly, math attention"] = partial(_with_math, peer, opt_peer, images, dtype)
            if args.compile:
                compiled = PixioPretrainModel(ours.cfg).to(device)
                compiled.load_state_dict(ours.state_dict())
                set_attention(compiled, "auto", device, dtype)
                for blk in _blocks(compiled):
                    blk.compile()
                opt_compiled = make_optimizer(compiled, OptimConfig(), device)
                steps["pixio_robot, compiled blocks"] = partial(
                    train_step, compiled, opt_compiled, images, noise, dtype
                )
            steps = {k: _synced(fn, device) for k, fn in steps.items()}
            secs = time_alternating(steps, args.reps, time.process_time if args.cpu_time else time.perf_counter)
            base = args.batch / secs["lightly"]
            for name, s in secs.items():
                label = f"pixio_robot ({attention} attention)" if name == "pixio_robot" else name
                rate = args.batch / s
                mfu = f"{100 * flops / s / (peak * 1e12):.0f}%" if peak else "-"
                print(
                    f"| 512x{depth} | {dtype_name} | {label} | {rate:.2f} | {rate / base:.2f}x | {flops / 1e12:.3f} "
                    f"| {mfu} |",
                    flush=True,
                )
            del ours, peer, opt_ours, opt_peer, steps


def _blocks(model: nn.Module) -> list[nn.Module]:
    from timm.models.vision_transformer import Block

    return [m for m in model.modules() if isinstance(m, Block)]


def _with_math(model, optimizer, images, dtype) -> None:
    set_attention(model, "math", images.device, dtype)
    try:
        train_step(model, optimizer, images, None, dtype)
    finally:
        set_attention(model, "fused", images.device, dtype)


if __name__ == "__main__":
    main()
