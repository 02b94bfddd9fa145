"""Reconstruction cost against the number of views: time and peak memory.

vitb16 encoder and a head (random weights), 256x256 views, 2, 4 and 8 views per set. Time: the
three settings run alternately in one process (median of the repetitions), split into the
encoder (per-view tokens) and the head (alternating attention, dense, pose and scale heads,
metric points). Memory: each setting in a fresh process; on CPU its peak resident set size
(and the part above the process with the models loaded, i.e. what inference adds); on CUDA
the peak allocated memory. Ratios are against 2 views.

    uv run python benchmarks/recon.py [--views 2 4 8] [--head base] [--reps 5] [--device cpu] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from peak_memory import peak_rss_mb, reset_peak_rss, rss_mb  # beside this file

# This file is named like the package it measures: keep its folder off the import path.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

from pixio_robot import create_encoder  # noqa: E402
from recon.configuration_recon import ReconConfig  # noqa: E402
from recon.modeling_recon import ReconModel  # noqa: E402

HEADS = {
    "tiny": ReconConfig(dim=64, depth=2, num_heads=2, head_hidden=64),
    "small": ReconConfig(),
    "base": ReconConfig(dim=384, depth=8, num_heads=6, head_hidden=768),
}


def build(args):
    torch.manual_seed(0)
    encoder = create_encoder(args.size, img_size=args.image).eval().to(args.device)
    head = ReconModel(HEADS[args.head], encoder.embed_dim, encoder.patch_size).eval().to(args.device)
    return encoder, head


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.inference_mode()
def run_once(encoder, head, x: torch.Tensor, device: str) -> tuple[float, float]:
    """(encoder seconds, head seconds) for one set x (V, 3, H, W)."""
    sync(device)
    t0 = time.perf_counter()
    tokens = encoder.features(x, -1, cls=False)[0].patches[None]  # (1, V, h, w, D)
    sync(device)
    t1 = time.perf_counter()
    out = head(tokens)
    out.points(metric=True)
    sync(device)
    return t1 - t0, time.perf_counter() - t1


def child(args) -> None:
    """One setting in this fresh process: peak memory as JSON on stdout."""
    encoder, head = build(args)
    x = torch.randn(args.child, 3, args.image, args.image, device=args.device)
    loaded = rss_mb()
    reset_peak_rss()  # building the models peaks higher than inference: measure from here
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    run_once(encoder, head, x, args.device)
    result = {"peak_rss_mb": peak_rss_mb(), "loaded_rss_mb": loaded}
    if args.device.startswith("cuda"):
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["cuda_added_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    print(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--views", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--size", default="vitb16")
    ap.add_argument("--head", default="base", choices=sorted(HEADS))
    ap.add_argument("--image", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child is not None:
        child(args)
        return

    encoder, head = build(args)
    n_head = sum(p.numel() for p in head.parameters())
    print(
        f"{args.size} encoder + {args.head} head ({n_head / 1e6:.2f}M parameters), {args.image}x{args.image}, "
        f"{args.device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
        f"torch {torch.__version__}, median of {args.reps}"
    )
    inputs = {v: torch.randn(v, 3, args.image, args.image, device=args.device) for v in args.views}
    for v in args.views:  # warm-up
        run_once(encoder, head, inputs[v], args.device)
    times: dict[int, list[tuple[float, float]]] = {v: [] for v in args.views}
    for _ in range(args.reps):
        for v in args.views:
            times[v].append(run_once(encoder, head, inputs[v], args.device))
    memory = {}
    for v in args.views:
        cmd = [sys.executable, __file__, "--child", str(v), "--size", args.size, "--head", args.head]
        cmd += ["--image", str(args.image), "--device", args.device, "--threads", str(torch.get_num_threads())]
        memory[v] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])

    base = args.views[0]
    med = {v: tuple(statistics.median(t[i] for t in times[v]) for i in (0, 1)) for v in args.views}
    total = {v: sum(med[v]) for v in args.views}
    key, added = ("cuda_peak_mb", "cuda_added_mb") if args.device.startswith("cuda") else ("peak_rss_mb", None)
    mem_label = "peak CUDA allocated (MB)" if added else "peak RSS (MB)"
    extra = "inference adds (MB)" if added else "above loaded models (MB)"
    header = ["views", "total (s)", "encoder (s)", "head (s)", f"time vs {base} views", mem_label, extra]
    print("\n| " + " | ".join([*header, f"memory vs {base} views"]) + " |")
    print("|---|---|---|---|---|---|---|---|")
    for v in args.views:
        m = memory[v]
        grown = m[added] if added else m["peak_rss_mb"] - m["loaded_rss_mb"]
        grown_base = memory[base][added] if added else memory[base]["peak_rss_mb"] - memory[base]["loaded_rss_mb"]
        print(
            f"| {v} | {total[v]:.3f} | {med[v][0]:.3f} | {med[v][1]:.3f} | {total[v] / total[base]:.2f}x "
            f"| {m[key]:.0f} | {grown:.0f} | {grown / max(grown_base, 1e-9):.2f}x |"
        )


if __name__ == "__main__":
    main()
