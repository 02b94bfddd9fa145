"""Feature-extraction throughput: pixio_robot's encoder against transformers' PixioModel.

Same weights, same input (vitb16, 256x256, batch 8), float32 and bfloat16, on CPU (and on the
GPU when there is one). The two models run alternately in one process; each figure is the
median of the timed repetitions. Achieved GFLOP/s is set against the best matmul rate measured
on the same machine and dtype.

    uv run python benchmarks/encoder.py [--reps 5] [--batch 8] [--size vitb16] [--no-compile] [--compile-peer]
    python benchmarks/encoder.py --device cuda --size vith16 --batch 64 --compile-peer     # a GPU's rows only
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time

import torch

from pixio_robot import load_encoder
from pixio_robot.encoder import PIXIO_SIZES, canonical_size


def encoder_flops(embed_dim: int, depth: int, tokens: int, patches: int, mlp_ratio: float = 4.0) -> float:
    """Multiply-adds x 2 of one image through the encoder (matmuls and attention)."""
    d, n = embed_dim, tokens
    per_block = 2 * n * d * (3 * d + d + 2 * mlp_ratio * d) + 2 * 2 * n * n * d
    return depth * per_block + 2 * patches * d * 3 * 16 * 16


def matmul_peak(dtype: torch.dtype, device: str, reps: int = 5) -> float:
    """Best GFLOP/s over a few large matmuls, including the encoder's own shapes."""
    best = 0.0
    for m, k, n in [(2048, 2048, 2048), (4096, 4096, 4096), (2112, 768, 3072), (2112, 3072, 768)]:
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        for _ in range(2):
            a @ b
        times = []
        for _ in range(reps):
            sync(device)
            t = time.perf_counter()
            a @ b
            sync(device)
            times.append(time.perf_counter() - t)
        best = max(best, 2 * m * k * n / min(times) / 1e9)
    return best


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_alternating(fns: dict, x: torch.Tensor, reps: int, device: str) -> dict[str, float]:
    """Median seconds per call, running the candidates in turn each repetition."""
    with torch.inference_mode():
        for fn in fns.values():  # warm-up (and compilation)
            fn(x)
            fn(x)
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(reps):
            for name, fn in fns.items():
                sync(device)
                t = time.perf_counter()
                fn(x)
                sync(device)
                times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="vitb16")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--image", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled encoder (~1 min per dtype)")
    ap.add_argument("--compile-peer", action="store_true", help="also time transformers under torch.compile")
    ap.add_argument("--device", choices=("cpu", "cuda"), help="only this device (default: the CPU, and the GPU if any)")
    args = ap.parse_args()

    from transformers import PixioConfig, PixioModel

    d, depth, heads = PIXIO_SIZES[canonical_size(args.size)]
    cfg = PixioConfig(
        hidden_size=d,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        image_size=256,
        patch_size=16,
        n_cls_tokens=8,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    hf = PixioModel(cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = load_encoder(tmp)

    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    grid = args.image // 16
    flops = args.batch * encoder_flops(d, depth, grid * grid + 8, grid * grid)
    cpu = platform.processor() or platform.machine()
    print(
        f"# {args.size}, batch {args.batch}, {args.image}x{args.image}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {cpu}"
    )
    print("| device | dtype | model | images/s | GFLOP/s | % matmul peak | vs transformers |")
    print("|---|---|---|---|---|---|---|")
    for device in devices:
        for dtype in (torch.float32, torch.bfloat16):
            m_ours = ours.to(device=device, dtype=dtype)
            m_hf = hf.to(device=device, dtype=dtype)
            x = torch.randn(args.batch, 3, args.image, args.image, device=device, dtype=dtype)
            fns = {"transformers PixioModel": m_hf, "pixio_robot": m_ours}
            options = {"freezing": True} if device == "cpu" else None
            if not args.no_compile:  # the path FeatureExtractor(compile=True) takes
                fns["pixio_robot compiled"] = torch.compile(m_ours, dynamic=False, options=options)
            if args.compile_peer:
                fns["transformers compiled"] = torch.compile(m_hf, dynamic=False, options=options)
            secs = time_alternating(fns, x, args.reps, device)
            peak = matmul_peak(dtype, device)
            base = secs["transformers PixioModel"]
            for name, s in secs.items():
                gflops = flops / s / 1e9
                print(
                    f"| {device} | {str(dtype).removeprefix('torch.')} | {name} | {args.batch / s:.2f} | "
                    f"{gflops:.0f} | {100 * gflops / peak:.0f}% of {peak:.0f} | {base / s:.2f}x |"
                )


if __name__ == "__main__":
    main()
