"""The end-to-end result table of the README: success rates of behaviour-cloning policies on
frozen encoders, own tasks and the CortexBench MetaWorld five.

    uv run python benchmarks/policy_results.py                  # everything that is not done yet
    uv run python benchmarks/policy_results.py --dry-run        # print the commands only
    uv run python benchmarks/policy_results.py --encoders c --tasks push   # a part
    uv run python benchmarks/policy_results.py --table          # the table from what is done

Every number comes from three commands (collect, train-policy, eval-policy), printed with
--dry-run; steps whose output exists are skipped, so the script resumes where it stopped.

Protocol (CortexBench's, scaled to 2 shared CPU cores; see the README for the reasons):
- demonstrations: 50 scripted-expert episodes per own task (push, pick_place), 25 per
  MetaWorld task (CortexBench's number), collection seeds 0.., 128x128 images, one camera
  (own tasks `front`, MetaWorld `corner2`);
- encoders: (a) the small Pixio pre-trained by `pretrain/` on rendered frames of the suite,
  (b) the same architecture random-initialised, (c) timm ResNet-18 random-initialised;
- CortexBench head: unchanged (mean of class tokens / pooled features of 3 frames + state,
  BatchNorm, MLP 256x3 ReLU, MSE, Adam lr 1e-3, batch 256, 100 epochs), one training seed (100);
- chunking head: ACT-style at CPU size (width 128, 2 encoder + 1 decoder blocks, 4 heads,
  patch grid pooled to 4x4, chunk 20, temporal ensembling 0.01, AdamW 1e-4, batch 256),
  100 epochs on the own tasks, 40 on MetaWorld;
- evaluation: the last checkpoint (no selection on validation rollouts), held-out seeds from
  100000, 50 episodes per own task, 10 per MetaWorld task with a 200-step limit (the experts
  need at most 152), 2 environment processes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path("outputs/policy_results")
SMALL_ENCODER = "sim_vitn16"  # the bundled small Pixio (pixio_robot/weights/)
OWN_TASKS = {"push": "push", "pick_place": "pick_place"}
METAWORLD = ("assembly", "bin-picking", "button-press-topdown", "drawer-open", "hammer")
TASKS = {**OWN_TASKS, **{f"mw-{t}": f"metaworld/{t}" for t in METAWORLD}}
ENCODERS = {
    "a": [f"encoder={SMALL_ENCODER}"],
    "b": [f"encoder={SMALL_ENCODER}", "encoder_init=random"],
    "c": ["encoder=timm:resnet18", "encoder_init=random"],
}
ENCODER_NAMES = {"a": "Pixio small, pretrained", "b": "same, random init", "c": "ResNet-18, random init"}
HEADS = {
    "cortexbench": ["head=cortexbench"],
    "spatial": ["head=spatial"],
    "chunking": [
        "head=chunking",
        "head.dim=128",
        "head.ffn_dim=512",
        "head.heads=4",
        "head.encoder_layers=2",
        "head.token_grid=4",
    ],
}


def is_metaworld(task: str) -> bool:
    return task.startswith("mw-")


def commands(root: Path, task: str, encoder: str, head: str, episodes: int) -> list[tuple[Path, list[str]]]:
    """(output that marks the step done, pixio-robot arguments) for one table cell."""
    data, run, result = (
        root / "data" / task,
        root / "runs" / task / f"{head}-{encoder}",
        root / "results" / task / f"{head}-{encoder}",
    )
    mw = is_metaworld(task)
    collect = ["collect", f"env={TASKS[task]}", f"episodes={25 if mw else 50}", f"out={data}", "image_size=128"]
    epochs = 40 if (mw and head == "chunking") else 100
    train = ["train-policy", f"dataset={data}", *ENCODERS[encoder], *HEADS[head], f"epochs={epochs}"]
    train += ["batch_size=256", "seed=100", "eval_every=0", "threads=1", f"out={run}"]
    evaluate = ["eval-policy", f"policy={run}/checkpoints/best", f"episodes={episodes}", "workers=2"]
    evaluate += ["videos=2", "record=1", f"out={result}"] + (["time_limit=200"] if mw else [])
    return [
        (data / "meta/pixio_env.json", [*collect, "workers=2"]),
        (run / "summary.json", train),
        (result / "result.json", evaluate),
    ]


def run_step(done: Path, args: list[str], log: Path, dry_run: bool) -> bool:
    line = "uv run pixio-robot " + " ".join(args)
    if dry_run:
        print(line, flush=True)
        return True
    if done.exists():
        return True
    print(line, flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"\n$ {line}\n")
        f.flush()
        start = time.time()
        code = subprocess.call([sys.executable, "-m", "pixio_robot.cli", *args, "progress=false"], stdout=f, stderr=f)
        f.write(f"[exit {code} after {time.time() - start:.0f}s]\n")
    if code != 0:
        print(f"  failed (exit {code}): see {log}", flush=True)
    return code == 0


def cell(root: Path, task: str, encoder: str, head: str) -> dict | None:
    path = root / "results" / task / f"{head}-{encoder}" / "result.json"
    return json.loads(path.read_text()) if path.exists() else None


def table(root: Path) -> str:
    every = [(h, e) for h in HEADS for e in ENCODERS]
    cols = [(h, e) for h, e in every if any(cell(root, t, e, h) for t in TASKS)] or every
    head = "| task | " + " | ".join(f"{h} ({e})" for h, e in cols) + " |"
    lines = [head, "|---" * (len(cols) + 1) + "|"]

    def fmt(r: dict | None) -> str:
        if r is None:
            return "not run"
        lo, hi = r["ci95"]
        return f"{r['success_rate']:.0%} ({r['successes']}/{r['episodes']}) [{lo:.0%}, {hi:.0%}]"

    for task in OWN_TASKS:
        lines.append(f"| {task} | " + " | ".join(fmt(cell(root, task, e, h)) for h, e in cols) + " |")
    averages = []
    for h, e in cols:
        rs = [cell(root, f"mw-{t}", e, h) for t in METAWORLD]
        if any(r is None for r in rs):
            done = [r for r in rs if r is not None]
            averages.append(f"not run ({len(done)}/5 tasks)" if done else "not run")
        else:
            averages.append(f"{sum(r['success_rate'] for r in rs) / len(rs):.0%}")
    lines.append("| MetaWorld, 5-task average | " + " | ".join(averages) + " |")
    for t in METAWORLD:
        lines.append(f"| &nbsp;&nbsp;{t} | " + " | ".join(fmt(cell(root, f"mw-{t}", e, h)) for h, e in cols) + " |")
    legend = "; ".join(f"({k}) {v}" for k, v in ENCODER_NAMES.items())
    return "\n".join(lines) + f"\n\nSuccess rate (successes/episodes) [95% Wilson interval]. Encoders: {legend}.\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated: " + ",".join(TASKS))
    parser.add_argument("--encoders", default="c,b,a")
    parser.add_argument("--heads", default="cortexbench,chunking", help="comma-separated: " + ",".join(HEADS))
    parser.add_argument("--episodes", type=int, help="evaluation episodes per cell (default 50; MetaWorld 10)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands that would run")
    parser.add_argument("--table", action="store_true", help="only write the table of what is done")
    args = parser.parse_args()
    if not args.table:
        for encoder in args.encoders.split(","):
            for head in args.heads.split(","):
                for task in args.tasks.split(","):
                    episodes = args.episodes or (10 if is_metaworld(task) else 50)
                    for done, cmd in commands(args.root, task, encoder, head, episodes):
                        if not run_step(done, cmd, args.root / "logs" / f"{task}-{head}-{encoder}.log", args.dry_run):
                            break
    text = table(args.root)
    if not args.dry_run:
        (args.root / "table.md").write_text(text)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
