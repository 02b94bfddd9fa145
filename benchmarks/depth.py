"""Monocular depth inference: images/s and peak memory, image in, metric depth out.

Two settings, timed alternately in one process (median of the repetitions): the bundled pair
(`sim_vitn16_v2` + `depth_sim_vitn16_v2`, 128x128) and a vitb16 encoder with a DPT head of the
official widths (features 256, reassemble [256, 512, 1024, 1024]) at 256x256, random weights.
Each time covers the encoder's four taps and the head. Memory: each setting in a fresh process;
on CPU its peak resident set size and the part above the process with the models loaded (what
inference adds), on CUDA the peak allocated memory. The ratio is vitb16 DPT against bundled.

    uv run python benchmarks/depth.py [--batch 8] [--reps 5] [--device cpu] [--threads N]
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

# benchmarks/recon.py beside this file would shadow the recon package: keep the folder off the path.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

from pixio_robot import create_encoder  # noqa: E402
from recon.configuration_depth import DepthHeadConfig  # noqa: E402
from recon.depth import load_depth_model  # noqa: E402
from recon.modeling_depth import DepthHead  # noqa: E402

SETTINGS = ("bundled", "vitb16-dpt")


def build(setting: str, device: str):
    """(encoder, head, image size) of a setting, in eval mode on `device`."""
    torch.manual_seed(0)
    if setting == "bundled":
        head, encoder, _, (size, _) = load_depth_model("depth_sim_vitn16_v2")
    else:
        size = 256
        encoder = create_encoder("vitb16", img_size=size)
        config = DepthHeadConfig(features=256, channels=[256, 512, 1024, 1024], max_depth=10.0)
        head = DepthHead(config, 2 * encoder.embed_dim)
    return encoder.eval().to(device), head.eval().to(device), size


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.inference_mode()
def infer(encoder, head, x: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W), normalised -> depth (B, H, W) in metres."""
    taps = torch.stack(encoder.dense_features(x), dim=1)  # (B, 4, h, w, 2D)
    return head(taps, x.shape[-2:])


def child(args) -> None:
    """One setting in this fresh process: peak memory as JSON on stdout."""
    encoder, head, size = build(args.child, args.device)
    x = torch.randn(args.batch, 3, size, size, device=args.device)
    loaded = rss_mb()
    reset_peak_rss()  # building the models peaks higher than inference: measure from here
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    infer(encoder, head, x)
    result = {"peak_rss_mb": peak_rss_mb(), "added_mb": peak_rss_mb() - loaded}
    if args.device.startswith("cuda"):
        result |= {"peak_rss_mb": torch.cuda.max_memory_allocated() / 2**20}
        result |= {"added_mb": (torch.cuda.max_memory_allocated() - base) / 2**20}
    print(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--child", choices=SETTINGS, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return

    built = {s: build(s, args.device) for s in SETTINGS}
    inputs = {s: torch.randn(args.batch, 3, built[s][2], built[s][2], device=args.device) for s in SETTINGS}
    for s in SETTINGS:  # warm-up
        infer(*built[s][:2], inputs[s])
    times: dict[str, list[float]] = {s: [] for s in SETTINGS}
    for _ in range(args.reps):
        for s in SETTINGS:
            sync(args.device)
            t = time.perf_counter()
            infer(*built[s][:2], inputs[s])
            sync(args.device)
            times[s].append(time.perf_counter() - t)
    memory = {}
    for s in SETTINGS:
        cmd = [sys.executable, __file__, "--child", s, "--batch", str(args.batch), "--device", args.device]
        cmd += ["--threads", str(torch.get_num_threads())]
        memory[s] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])

    cuda = args.device.startswith("cuda")
    print(
        f"batch {args.batch}, {args.device} ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads), torch {torch.__version__}, float32, median of {args.reps}"
    )
    mem = "peak CUDA allocated (MB)" if cuda else "peak RSS (MB)"
    print(f"\n| setting | image | parameters (M) | images/s | {mem} | inference adds (MB) |")
    print("|---|---|---|---|---|---|")
    rate = {}
    for s in SETTINGS:
        encoder, head, size = built[s]
        n = sum(p.numel() for p in encoder.parameters()) + sum(p.numel() for p in head.parameters())
        rate[s] = args.batch / statistics.median(times[s])
        m = memory[s]
        print(f"| {s} | {size}x{size} | {n / 1e6:.1f} | {rate[s]:.1f} | {m['peak_rss_mb']:.0f} | {m['added_mb']:.0f} |")
    print(f"\nvitb16 DPT at 256 runs at {rate['vitb16-dpt'] / rate['bundled']:.3f}x the bundled pair's images/s")


if __name__ == "__main__":
    main()
