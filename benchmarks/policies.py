"""Policy benchmark: training with the feature cache against re-encoding images every step, and
evaluation with 1 against 2 environment processes.

    uv run python benchmarks/policies.py                       # records its own small dataset
    uv run python benchmarks/policies.py --dataset data/push --encoder vits16

1. Training samples/s, CortexBench head (history 3), batch 256, vits16 encoder at the dataset's
   image size: steps reading cached features (what train-policy does by default) against steps
   that decode-free re-encode the (augmented) frames of the batch with the frozen encoder
   (`cache=off`), measured alternately in this process; the one-off cost of building the cache
   is reported too.
2. Training samples/s of the keypoint head on cached patch tokens, as train-policy steps (each
   distinct frame of a batch coded once): batches of shuffled frames against runs of 16
   consecutive frames of one episode (`consecutive=16`), alternately.
3. Evaluation episodes/min of the same policy, 1 against 2 environment processes (one torch
   thread each), the same seeds, alternately: with the start-up of the processes, and after
   the first episode is in (`episodes_per_minute_after_first` of the result).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

# This file is named like the package it measures: keep its folder off the import path.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def collect(root: Path, episodes: int, image_size: int) -> Path:
    from pixio_robot.cli import main

    path = root / "push"
    args = ["collect", "env=push", f"episodes={episodes}", f"image_size={image_size}", f"out={path}", "workers=2"]
    assert main([*args, "progress=false"]) == 0
    return path


def training_rates(dataset: Path, encoder: str, batch: int, rounds: int, cached_steps: int, image_steps: int) -> dict:
    from policies import CortexBenchConfig, Demonstrations, load_backbone
    from policies.train import CachedFeatures, EncodedImages, cache_features, make_policy

    hc = CortexBenchConfig()
    seed = 100
    demos = Demonstrations.load(dataset)
    backbone, spec = load_backbone(encoder, seed=seed)
    policy = make_policy(demos, backbone, spec, hc)
    optimizer = torch.optim.AdamW(policy.head.parameters(), lr=hc.lr, weight_decay=hc.weight_decay)

    t = time.perf_counter()
    [cache] = cache_features(dataset, encoder, seed=seed, location=str(dataset.parent / "bench_cache"), progress=False)
    build_s = time.perf_counter() - t
    sources = {
        "cache": CachedFeatures([cache], ("global",)),
        "images": EncodedImages([demos.decode_frames()], policy, True),
    }
    states, actions = torch.from_numpy(demos.states), torch.from_numpy(demos.actions)
    generator = torch.Generator().manual_seed(0)

    def step(source) -> None:
        index = torch.randint(0, len(demos), (batch,), generator=generator)
        history, _ = demos.windows(index, policy.config.observation_delta_indices)
        targets, pad = demos.windows(index, policy.config.action_delta_indices)
        loss = policy.loss_from_features(source(history, generator), states[index], actions[targets], pad)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    policy.train()
    step(sources["cache"])
    step(sources["images"])  # warm-up of both paths
    rates: dict[str, list[float]] = {"cache": [], "images": []}
    for _ in range(rounds):
        for name, steps in (("cache", cached_steps), ("images", image_steps)):
            t = time.perf_counter()
            for _ in range(steps):
                step(sources[name])
            rates[name].append(steps * batch / (time.perf_counter() - t))
    return {
        "cache_build_s": build_s,
        "frames": len(demos),
        "cache": statistics.median(rates["cache"]),
        "images": statistics.median(rates["images"]),
    }


def consecutive_rates(dataset: Path, encoder: str, batch: int, rounds: int, steps: int, tmp: Path) -> dict:
    from policies import Demonstrations, TrainPolicyConfig, load_backbone
    from policies.heads import head_config
    from policies.train import CachedFeatures, _Epochs, cache_features, epoch_order, make_policy

    hc = head_config({"name": "keypoints"})
    demos = Demonstrations.load(dataset)
    backbone, spec = load_backbone(encoder, seed=100)
    policy = make_policy(demos, backbone, spec, hc)
    optimizer = torch.optim.AdamW(policy.head.parameters(), lr=hc.lr, weight_decay=hc.weight_decay)
    location = str(dataset.parent / "bench_cache_patches")
    [cache] = cache_features(dataset, encoder, seed=100, patches=True, location=location, progress=False)
    source = CachedFeatures([cache], ("patches",))
    runs = {}
    for k in (1, 16):  # train-policy's own step function, nothing rewritten here
        cfg = TrainPolicyConfig(dataset=str(dataset), encoder=encoder, consecutive=k, batch_size=batch, out=str(tmp))
        runs[k] = _Epochs(cfg, demos, policy, source, torch.device("cpu"))
        runs[k](0)  # warm-up
    policy.train()
    rates: dict[int, list[float]] = {1: [], 16: []}
    for _ in range(rounds):
        for k, step in runs.items():
            t, samples = time.perf_counter(), 0
            for i in range(steps):
                optimizer.zero_grad()
                step(i)
                optimizer.step()
                samples += step._epoch_loss[-1][1]  # an epoch's last batch may be smaller
            rates[k].append(samples / (time.perf_counter() - t))
    distinct = {}  # frames a full batch's 3-frame histories hold, over one epoch's first batches
    for k in (1, 16):
        order = epoch_order(demos, k, torch.Generator().manual_seed(0))
        batches = [order[i : i + batch] for i in range(0, len(order) - batch + 1, batch)][:steps]
        deltas = policy.config.observation_delta_indices
        distinct[k] = statistics.mean(len(torch.unique(demos.windows(b, deltas)[0])) for b in batches)
    return {k: (statistics.median(rates[k]), distinct[k]) for k in (1, 16)}


def eval_rates(dataset: Path, encoder: str, episodes: int, rounds: int, tmp: Path) -> dict:
    from policies import TrainPolicyConfig, evaluate, train_policy

    run = train_policy(
        TrainPolicyConfig(
            dataset=str(dataset),
            encoder=encoder,
            epochs=1,
            out=str(tmp / "policy"),
            cache=str(dataset.parent / "bench_cache"),
            progress=False,
        )
    )
    seeds = range(100_000, 100_000 + episodes)
    keys = ("episodes_per_minute", "episodes_per_minute_after_first")
    rates: dict[int, list[dict]] = {1: [], 2: []}
    steps = {}
    for _ in range(rounds):
        for workers in (1, 2):
            result = evaluate(run.best, seeds=seeds, workers=workers, progress=False)
            rates[workers].append(result)
            steps[workers] = sum(e["length"] for e in result["per_episode"])
    medians = {w: [statistics.median(r[k] for r in rs) for k in keys] for w, rs in rates.items()}
    return {"env": result["env_name"], "steps": steps, **medians}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, help="a recorded dataset (default: record 20 push episodes)")
    parser.add_argument("--encoder", default="vits16")
    parser.add_argument("--image-size", type=int, default=128, help="image size of the recorded dataset")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=24, help="episodes per evaluation")
    parser.add_argument("--skip-eval", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dataset = args.dataset or collect(tmp, 20, args.image_size)
        if args.dataset:  # keep the benchmark's cache out of the user's dataset folder
            import shutil

            shutil.copytree(args.dataset, tmp / "data", ignore=shutil.ignore_patterns("features"))
            dataset = tmp / "data"
        train = training_rates(dataset, args.encoder, args.batch, args.rounds, cached_steps=20, image_steps=1)
        runs = consecutive_rates(dataset, args.encoder, args.batch, args.rounds, 20, tmp / "runs")
        ev = None if args.skip_eval else eval_rates(dataset, args.encoder, args.episodes, max(1, args.rounds - 1), tmp)

    print(
        f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads; {args.encoder}, "
        f"{train['frames']} frames at {args.image_size}x{args.image_size}; batch {args.batch}"
    )
    build = train["cache_build_s"]
    print(f"feature cache built once in {build:.1f}s ({train['frames'] / build:.1f} frames/s)\n")
    print("| training step (CortexBench head, history 3) | samples/s | vs re-encoding |")
    print("|---|---|---|")
    print(f"| re-encoding augmented images every step (cache=off) | {train['images']:.1f} | 1.00x |")
    print(f"| reading the feature cache | {train['cache']:.0f} | {train['cache'] / train['images']:.0f}x |")
    print("\n| training step (keypoint head, cached patch tokens) | distinct frames per batch | samples/s | ratio |")
    print("|---|---|---|---|")
    for k, name in ((1, "shuffled frames (consecutive=1)"), (16, "runs of 16 consecutive frames (consecutive=16)")):
        rate, frames = runs[k]
        print(f"| {name} | {frames:.0f} of {3 * args.batch} | {rate:.0f} | {rate / runs[1][0]:.2f}x |")
    if ev is not None:
        print(f"\n| evaluation ({ev['env']}, policy above, 1 torch thread each) | episodes/min | vs 1 process |")
        print("|---|---|---|")
        for w in (1, 2):
            processes = f"{w} environment process{'es' if w > 1 else ''}"
            (total, steady), (total1, steady1) = ev[w], ev[1]
            run = f"{processes}, {args.episodes} episodes ({ev['steps'][w]} steps)"
            print(f"| {run}, with start-up | {total:.1f} | {total / total1:.2f}x |")
            print(f"| {processes}, after the first episode | {steady:.1f} | {steady / steady1:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
