"""Activation memory of a pre-training step with and without activation checkpointing.

Counts the bytes autograd keeps for the backward pass (every tensor saved by the forward,
through `torch.autograd.graph.saved_tensors_hooks`), and the process's peak resident memory
for one forward + backward in a fresh subprocess per setting. Checkpointing keeps only each
block's input and recomputes the rest in the backward pass.

    uv run python benchmarks/checkpointing.py [--encoder vits16] [--decoder-depth 8] [--batch 32] [--size 128]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
from pathlib import Path

# Run as a script, this folder comes first on sys.path and benchmarks/pretrain.py would hide
# the `pretrain` package: put the repository root there instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])


def step(args, checkpointing: bool) -> dict:
    import torch

    from pretrain.configuration_pixio import ModelConfig
    from pretrain.modeling_pixio import PixioPretrainModel

    torch.manual_seed(0)
    cfg = ModelConfig(
        encoder=args.encoder,
        image_size=args.size,
        decoder_dim=512,
        decoder_depth=args.decoder_depth,
        decoder_heads=16,
        grad_checkpointing=checkpointing,
    )
    model = PixioPretrainModel(cfg)
    images = torch.randn(args.batch, 3, args.size, args.size)
    saved = 0

    def pack(t):
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(images).loss
    loss.backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"saved_mib": saved / 2**20, "peak_rss_mib": peak / 1024, "rss_growth_mib": (peak - before) / 1024}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--encoder", default="vits16")
    p.add_argument("--decoder-depth", type=int, default=8)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--one", choices=["on", "off"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:  # the child: one setting, one process, so peak memory is its own
        print(json.dumps(step(args, args.one == "on")))
        return
    rows = {}
    for setting in ("off", "on"):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--one", setting]
        rows[setting] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    print(
        f"{platform.processor() or platform.machine()}, {args.encoder} + 512x{args.decoder_depth} decoder, "
        f"{args.size}px, batch {args.batch}, float32 CPU"
    )
    print("| checkpointing | activations kept (MiB) | peak RSS (MiB) | RSS growth in the step (MiB) |")
    print("|---|---|---|---|")
    for setting, r in rows.items():
        print(f"| {setting} | {r['saved_mib']:.0f} | {r['peak_rss_mib']:.0f} | {r['rss_growth_mib']:.0f} |")
    print(
        f"saved: {1 - rows['on']['saved_mib'] / rows['off']['saved_mib']:.0%} of the kept activations, "
        f"{rows['off']['rss_growth_mib'] - rows['on']['rss_growth_mib']:.0f} MiB of the step's peak"
    )


if __name__ == "__main__":
    main()
