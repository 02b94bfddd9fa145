"""Memory of a pre-training step: activations with and without checkpointing, and the
memory per GPU of the large presets under DDP, DDP + checkpointing and FSDP2 + checkpointing.

Default mode: the bytes autograd keeps for the backward pass (every tensor saved by the
forward, through `torch.autograd.graph.saved_tensors_hooks`) and the process's peak resident
memory for one forward + backward, in a fresh subprocess per setting. Checkpointing keeps
only each block's input and recomputes the rest in the backward pass.

    uv run python benchmarks/checkpointing.py [--encoder vits16] [--decoder-depth 8] [--batch 32] [--size 128]

`--preset vith16,vit5b16`: memory per GPU, computed. Parameters are counted on the meta
device; the saved activations per image and per block are measured (bf16 autocast, fused
attention, as on a GPU) on models of one and two encoder and decoder blocks at batch 1 and 2,
and scaled to the preset's depth and 64 images per GPU (the official recipes). With
`--measure` (on a GPU) one real step (forward, backward, AdamW) of the preset cut to
`--depth` blocks runs with and without checkpointing and torch.cuda.max_memory_allocated is
printed beside the computed figure.

    uv run python benchmarks/checkpointing.py --preset vith16,vit5b16 [--gpus 8] [--measure --depth 4]
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


# ---- memory per GPU of the large presets ------------------------------------------------------

RECIPE_GPUS = {"vith16": 128, "vit5b16": 256}  # the official recipes: 64 images per GPU
GB = 1e9


def preset_model(name: str, enc_depth: int | None = None, dec_depth: int | None = None, device="cpu"):
    """The preset's pre-training model, optionally cut to fewer encoder/decoder blocks."""
    import torch
    from omegaconf import OmegaConf

    from pixio_robot.encoder import create_encoder
    from pretrain.configuration_pixio import ModelConfig
    from pretrain.modeling_pixio import PixioPretrainModel, set_attention

    root = Path(__file__).resolve().parents[1]
    model = OmegaConf.to_container(OmegaConf.load(root / "configs" / "pretrain" / f"{name}.yaml"))["model"]
    cfg = ModelConfig(**model)
    if dec_depth is not None:
        cfg.decoder_depth = dec_depth
    with torch.device(device):
        depth = {} if enc_depth is None else {"depth": enc_depth}
        encoder = create_encoder(cfg.encoder, img_size=cfg.image_size, n_cls_tokens=cfg.n_cls_tokens, **depth)
        out = PixioPretrainModel(cfg, encoder)
    set_attention(out, "fused", torch.device("cuda"), torch.bfloat16)  # the GPU kernel: no T x T matrix kept
    return cfg, out


def saved_bytes(name: str, enc_depth: int, dec_depth: int, batch: int, checkpointing: bool) -> int:
    """Bytes the forward keeps for the backward (bf16 autocast; storages counted once)."""
    import torch

    torch.manual_seed(0)
    cfg, model = preset_model(name, enc_depth, dec_depth)
    model.set_grad_checkpointing(checkpointing)
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    images = torch.randn(batch, 3, cfg.image_size, cfg.image_size)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        model(images)
    return sum(storages.values())


def activation_model(name: str, checkpointing: bool) -> dict:
    """Saved bytes = batch x (other + E x per encoder block + D x per decoder block) + the
    batch-independent rest (bf16 weight copies autocast keeps), solved from six small models."""
    s = {
        (e, d, b): saved_bytes(name, e, d, b, checkpointing)
        for e, d, b in [(1, 1, 1), (2, 1, 1), (1, 2, 1), (1, 1, 2), (2, 1, 2), (1, 2, 2)]
    }
    per = {k: s[k[0], k[1], 2] - s[k[0], k[1], 1] for k in [(1, 1), (2, 1), (1, 2)]}  # per image
    enc, dec = per[2, 1] - per[1, 1], per[1, 2] - per[1, 1]
    fixed = {k: s[k[0], k[1], 1] - per[k] for k in [(1, 1), (2, 1), (1, 2)]}  # batch-independent
    return {
        "enc": enc,
        "dec": dec,
        "other": per[1, 1] - enc - dec,
        "enc_fixed": fixed[2, 1] - fixed[1, 1],
        "dec_fixed": fixed[1, 2] - fixed[1, 1],
        "other_fixed": fixed[1, 1] - (fixed[2, 1] - fixed[1, 1]) - (fixed[1, 2] - fixed[1, 1]),
    }


def activations(m: dict, enc_depth: int, dec_depth: int, batch: int) -> float:
    per_image = m["other"] + enc_depth * m["enc"] + dec_depth * m["dec"]
    return batch * per_image + m["other_fixed"] + enc_depth * m["enc_fixed"] + dec_depth * m["dec_fixed"]


def param_counts(name: str, enc_depth=None, dec_depth=None) -> dict:
    _, model = preset_model(name, enc_depth, dec_depth, device="meta")
    enc_block = sum(p.numel() for p in model.encoder.blocks[0].parameters())
    dec_block = sum(p.numel() for p in model.decoder.blocks[0].parameters())
    total = sum(p.numel() for p in model.parameters())
    blocks = len(model.encoder.blocks) * enc_block + len(model.decoder.blocks) * dec_block
    return {
        "total": total,
        "enc_block": enc_block,
        "dec_block": dec_block,
        "root": total - blocks,
        "enc_depth": len(model.encoder.blocks),
        "dec_depth": len(model.decoder.blocks),
    }


def per_gpu(n: dict, act_off: dict, act_on: dict, gpus: int, batch: int = 64) -> dict[str, dict]:
    """Bytes per GPU by part. State: fp32 weights, fp32 gradients, two fp32 AdamW moments (16 B
    per parameter), whole under DDP (its gradient buckets are the gradients:
    gradient_as_bucket_view) and a 1/gpus share under FSDP2. Activations: the saved bytes above;
    with checkpointing plus one block's own activations, recomputed in the backward pass. FSDP2
    also holds whole bf16 copies of the root unit (embeddings, norms, heads) and, per block,
    the block being run and the one prefetched (bf16) and one block's whole gradients (bf16 and
    the fp32 copy reduced)."""
    e, d = n["enc_depth"], n["dec_depth"]
    recompute = batch * max(act_off["enc"], act_off["dec"])
    biggest = max(n["enc_block"], n["dec_block"])
    return {
        "DDP": {"state": 16 * n["total"], "activations": activations(act_off, e, d, batch), "working": 0},
        "DDP + checkpointing": {
            "state": 16 * n["total"],
            "activations": activations(act_on, e, d, batch) + recompute,
            "working": 0,
        },
        "FSDP2 + checkpointing": {
            "state": 16 * n["total"] / gpus,
            "activations": activations(act_on, e, d, batch) + recompute,
            "working": (2 + 4) * n["root"] + (2 * 2 + 2 + 4) * biggest,
        },
    }


def measure(name: str, depth: int, checkpointing: bool, batch: int = 64) -> float:
    """Peak CUDA memory of one real step of the preset cut to `depth` encoder and decoder blocks."""
    import torch

    torch.manual_seed(0)
    cfg, model = preset_model(name, depth, depth)
    model = model.cuda()
    model.set_grad_checkpointing(checkpointing)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    images = torch.randn(batch, 3, cfg.image_size, cfg.image_size, device="cuda")
    for _ in range(2):  # the second step has the AdamW moments allocated
        torch.cuda.reset_peak_memory_stats()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(images).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return torch.cuda.max_memory_allocated()


def presets(args) -> None:
    import torch

    rows = [
        "| preset | parameters | setting | GPUs | weights, grads, AdamW (GB) | activations (GB) "
        "| gathered weights, grads (GB) | total per GPU (GB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    checks = []
    for name in args.preset.split(","):
        n = param_counts(name)
        act = {on: activation_model(name, on) for on in (False, True)}
        for gpus in sorted({args.gpus, RECIPE_GPUS.get(name, args.gpus)}):
            for setting, parts in per_gpu(n, act[False], act[True], gpus).items():
                if setting != "FSDP2 + checkpointing" and gpus != args.gpus:
                    continue  # DDP does not depend on the number of GPUs
                total = sum(parts.values())
                rows.append(
                    f"| {name} | {n['total'] / 1e9:.2f}B | {setting} | {gpus} | {parts['state'] / GB:.1f} "
                    f"| {parts['activations'] / GB:.1f} | {parts['working'] / GB:.1f} | {total / GB:.1f} |"
                )
        if args.measure:
            cut = param_counts(name, args.depth, args.depth)
            cut_parts = per_gpu(cut, act[False], act[True], 1)
            for on, setting in ((False, "DDP"), (True, "DDP + checkpointing")):
                computed = sum(cut_parts[setting].values())
                got = measure(name, args.depth, on)
                checks.append(
                    f"| {name}, {args.depth}+{args.depth} blocks | {setting} | {computed / GB:.2f} "
                    f"| {got / GB:.2f} | {got / computed:.2f} |"
                )
    gpu = f"; measured on {torch.cuda.get_device_name()}" if args.measure else ""
    print(f"64 images per GPU at 256 px, bf16 autocast, fused attention; activations counted on the CPU{gpu}")
    print("\n".join(rows))
    if checks:
        print("\n| model | setting | computed (GB) | measured peak (GB) | measured / computed |\n|---|---|---|---|---|")
        print("\n".join(checks))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", help="comma-separated pretrain presets: memory per GPU (e.g. vith16,vit5b16)")
    p.add_argument("--gpus", type=int, default=8, help="--preset: GPUs FSDP2 shards over (also the recipe's)")
    p.add_argument("--measure", action="store_true", help="--preset: measure a step cut to --depth blocks (GPU)")
    p.add_argument("--depth", type=int, default=4, help="--measure: encoder and decoder blocks kept")
    p.add_argument("--encoder", default="vits16")
    p.add_argument("--decoder-depth", type=int, default=8)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--one", choices=["on", "off"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.preset:
        if args.measure and not __import__("torch").cuda.is_available():
            p.error("--measure needs a GPU (torch.cuda.is_available() is False)")
        presets(args)
        return
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
