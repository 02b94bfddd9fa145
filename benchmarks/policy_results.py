"""The end-to-end result tables of the README: success rates of behaviour-cloning policies on
frozen encoders, for two protocols.

    uv run python benchmarks/policy_results.py                  # everything that is not done yet
    uv run python benchmarks/policy_results.py --dry-run        # print the commands only
    uv run python benchmarks/policy_results.py --encoders a,b --tasks reach   # a part
    uv run python benchmarks/policy_results.py --table          # the table from what is done
    uv run python benchmarks/policy_results.py --protocol cortexbench   # the earlier table
    uv run python benchmarks/policy_results.py --protocol benchmark-wrist   # front + wrist, encoder v2
    uv run python benchmarks/policy_results.py --protocol benchmark-sharp   # the same, today's keypoint head
    uv run python benchmarks/policy_results.py --protocol eai-vc    # the MetaWorld five, eai-vc's protocol

Every number comes from three commands (collect, train-policy, eval-policy); --dry-run prints
those still to run. Steps whose output exists are skipped, and a cell whose result exists is
done, so the script resumes where it stopped.

`--protocol benchmark` (the default; issue 12's table, outputs/policy_benchmark):
- tasks: reach, push, pick_place, stack at the benchmark level, push at the hard level;
- demonstrations: 300 scripted-expert episodes per task with DART noise 0.3 (the expert runs
  perturbed actions and labels its own), the object state recorded, collection seeds 0..,
  `front` at 128x128;
- policies: (a) the keypoint head on the bundled pre-trained Pixio (frozen), (b) the same on
  the same architecture random-initialised, (c) the oracle: the CortexBench head on the
  recorded object state instead of images (what the task allows with perfect perception);
  100 epochs, training seeds 100 and 200;
- evaluation: the last checkpoint on 50 held-out episodes (seeds from 100000), 2 processes;
  the table adds each encoder's pooled rate and the two-proportion z-test of (a) against (b).

`--protocol benchmark-wrist` (outputs/policy_benchmark_wrist): the same cells with the cameras
and encoder that worked best on pick_place: demonstrations recorded from `front` and `wrist`,
policies reading both (`cameras=[front,wrist]`), (a) and (b) on the default encoder v2
(`sim_vitn16_v2`).

`--protocol benchmark-sharp` (outputs/policy_benchmark_sharp): benchmark-wrist's cells on the
same demonstrations (read from outputs/policy_benchmark_wrist/data, recorded there once) with the
keypoint head's current defaults (a set of sharp maps per camera) instead of the earlier shared
maps at temperature 1; (c) is benchmark-wrist's.

`--protocol eai-vc` (outputs/policy_eaivc): CortexBench's MetaWorld protocol as eai-vc runs it,
unscaled (the `collect=eai_vc` and `train-policy=eai_vc` presets): the five tasks, 25
demonstrations at 256x256 from `top_cap2`, the CortexBench head on raw actions, 100 epochs,
validation every 5 epochs on 25 episodes (seeds from 50000) with the best checkpoint kept; the
renders resized to the encoder's 128 px (`image_size=128`) as eai-vc resizes them to each
model's input size; (a) the default encoder v2 pre-trained, (b) the same architecture random-initialised; the
table gives eai-vc's number (the best validation success) and the best checkpoint's success on
25 held-out episodes (seeds from 100000, `test_episodes=25`). A stopped run resumes from its
last checkpoint (`save_every=5`: at most one validation is repeated). Each finished cell's
summary is copied to benchmarks/results/policy_eaivc/ (committed; with --root, ROOT/records):
the table reads those records, and a cell with a record is done.

`--protocol cortexbench` (the earlier table, outputs/policy_results): CortexBench's protocol
scaled to 2 shared CPU cores (see the README for the reasons):
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
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

# benchmarks/policies.py is named like the package the table reads: keep this folder off the path.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from pixio_robot.harness import list_checkpoints  # noqa: E402  (after the path fix above)

# v1, not the default v2: the README's result tables were measured on it, and this script
# reproduces them (the cells resume by folder, so the encoder must not change under them).
SMALL_ENCODER = "sim_vitn16"
WRIST_ENCODER = "sim_vitn16_v2"  # benchmark-wrist: the default encoder of this version
METAWORLD = ("assembly", "bin-picking", "button-press-topdown", "drawer-open", "hammer")

# ---- protocol "benchmark": issue 12's table ------------------------------------------------------

BENCHMARK_ROOT = Path("outputs/policy_benchmark")
WRIST_ROOT = Path("outputs/policy_benchmark_wrist")
SHARP_ROOT = Path("outputs/policy_benchmark_sharp")
BENCHMARK_TASKS = {  # table row -> the collect options that make its environment
    "reach": ["env=reach"],
    "push": ["env=push"],
    "pick_place": ["env=pick_place"],
    "stack": ["env=stack"],
    "push-hard": ["env=push", "difficulty=hard"],
}
# The keypoint head as these tables measured it: one set of maps shared by the cameras, starting
# at temperature 1 (the head's defaults until per-camera sharp maps replaced them).
EARLIER_KEYPOINTS = ["head=keypoints", "head.per_view=false", "head.temperature=1.0"]
BENCHMARK_POLICIES = {
    "a": [f"encoder={SMALL_ENCODER}", *EARLIER_KEYPOINTS],
    "b": [f"encoder={SMALL_ENCODER}", "encoder_init=random", *EARLIER_KEYPOINTS],
    "c": ["encoder=oracle", "head=cortexbench"],
}
BENCHMARK_NAMES = {
    "a": "keypoint head on the bundled Pixio, pre-trained",
    "b": "the same on the same architecture, random-initialised",
    "c": "oracle: CortexBench head on the recorded object state",
}
SEEDS = (100, 200)


def benchmark_commands(
    root: Path, task: str, policy: str, seed: int, wrist: bool, sharp: bool = False, data_root: Path | None = None
) -> list[tuple[Path, list[str]]]:
    """(output that marks the step done, pixio-robot arguments) for one cell of the benchmark table;
    `sharp`: the keypoint head's current defaults instead of the tables' earlier ones."""
    data = (data_root or root / "data") / task
    run, result = root / "runs" / task / f"{policy}-{seed}", root / "results" / task / f"{policy}-{seed}"
    cameras = "cameras=[front,wrist]" if wrist else "cameras=[front]"
    collect = ["collect", *BENCHMARK_TASKS[task], "episodes=300", "noise=0.3", "environment_state=true"]
    collect += [cameras, "image_size=128", "workers=2", f"out={data}"]
    options = BENCHMARK_POLICIES[policy]
    if wrist and policy != "c":  # the oracle reads the object state, no camera
        options = [f"encoder={WRIST_ENCODER}", *options[1:], cameras]  # options[0] is the encoder
    if sharp and policy != "c":
        options = [o for o in options if o not in EARLIER_KEYPOINTS] + ["head=keypoints"]
    train = ["train-policy", f"dataset={data}", *options, "epochs=100", f"seed={seed}"]
    train += ["eval_every=0", f"out={run}"]
    evaluate = ["eval-policy", f"policy={run}/checkpoints/best", "episodes=50", "workers=2", "videos=2"]
    evaluate += [f"out={result}"]
    return [(data / "meta/pixio_env.json", collect), (run / "summary.json", train), (result / "result.json", evaluate)]


def benchmark_table(root: Path, wrist: bool, sharp: bool = False) -> str:
    from policies import two_proportion_test, wilson_interval

    def result(task, policy, seed):
        path = root / "results" / task / f"{policy}-{seed}" / "result.json"
        return json.loads(path.read_text()) if path.exists() else None

    def fmt(k: int, n: int) -> str:
        lo, hi = wilson_interval(k, n)
        return f"{k}/{n} = {k / n:.0%} ({lo:.0%}-{hi:.0%})"

    cols = [(p, s) for p in BENCHMARK_POLICIES for s in SEEDS]
    lines = ["| task | " + " | ".join(f"({p}) seed {s}" for p, s in cols) + " | (a) - (b): z, p |"]
    lines.append("|---" * (len(cols) + 2) + "|")

    def compare(pairs: list[tuple[dict, dict]]) -> str:
        """(a) against (b) over cells run for both (same task and training seed)."""
        (ka, na), (kb, nb) = [[sum(pair[i][k] for pair in pairs) for k in ("successes", "episodes")] for i in (0, 1)]
        z, pv = two_proportion_test(ka, na, kb, nb)
        return f"{ka / na - kb / nb:+.0%}: z = {z:.1f}, p = {pv:.3f}"

    paired = []
    for task in BENCHMARK_TASKS:
        rs = {c: result(task, *c) for c in cols}
        row = [fmt(r["successes"], r["episodes"]) if r else "not run" for r in rs.values()]
        pairs = [(rs["a", s], rs["b", s]) for s in SEEDS if rs["a", s] and rs["b", s]]
        paired += pairs
        lines.append(f"| {task} | " + " | ".join(row) + f" | {compare(pairs) if pairs else '-'} |")
    if paired:
        lines.append(f"\n(a) - (b) over the {len(paired)} (task, seed) pairs run for both: {compare(paired)}.")
    legend = "; ".join(f"({k}) {v}" for k, v in BENCHMARK_NAMES.items())
    seen = f"`front` + `wrist`, encoder {WRIST_ENCODER}" if wrist else f"`front`, encoder {SMALL_ENCODER}"
    seen += "; keypoint head: sharp maps per camera (its current defaults)" if sharp else ""
    return "\n".join(lines) + f"\n\nSuccesses/episodes = rate (95% Wilson interval). Policies: {legend}; {seen}.\n"


# ---- protocol "eai-vc": the MetaWorld five as eai-vc runs them ---------------------------------

EAIVC_ROOT = Path("outputs/policy_eaivc")
# Each finished cell's summary, kept in the repository: the table outlives the machine that ran it
# (a run is ~45 min of 2 cores, and the run folders under outputs/ are not committed).
EAIVC_RECORDS = Path(__file__).resolve().parent / "results" / "policy_eaivc"
EAIVC_TASKS = {f"mw-{t}": f"metaworld/{t}" for t in METAWORLD}
# The 256 px renders are resized to the encoder's pre-training resolution, as eai-vc resizes them to
# each model's input size (the README compares encoding at 256 px on assembly).
EAIVC_ENCODER = [f"encoder={WRIST_ENCODER}", "image_size=128"]
EAIVC_POLICIES = {"a": EAIVC_ENCODER, "b": [*EAIVC_ENCODER, "encoder_init=random"]}
EAIVC_VALIDATION_EPISODES = 25  # the train-policy=eai_vc preset's eval_episodes
EAIVC_NAMES = {"a": f"CortexBench head on {WRIST_ENCODER}, pre-trained", "b": "the same, random-initialised"}


def eaivc_commands(root: Path, task: str, policy: str, seed: int) -> list[tuple[Path, list[str]]]:
    """One cell: record (once per task), then train with validations and test the best checkpoint."""
    data, run = root / "data" / task, eaivc_run(root, task, policy, seed)
    collect = ["collect", "collect=eai_vc", f"env={EAIVC_TASKS[task]}", "workers=2", f"out={data}"]
    train = ["train-policy", "train-policy=eai_vc", f"dataset={data}", *EAIVC_POLICIES[policy], f"seed={seed}"]
    train += ["eval_workers=2", "test_episodes=25", "save_every=5", f"out={run}"]
    if list_checkpoints(run):
        train.append("resume=true")  # a stopped run continues from its last checkpoint
    return [(data / "meta/pixio_env.json", collect), (run / "eval/result.json", train)]


def eaivc_run(root: Path, task: str, policy: str, seed: int) -> Path:
    return root / "runs" / task / f"{policy}-{seed}"


def discard_stillborn(run: Path) -> None:
    """Remove a run folder this runner started that stopped before its first checkpoint: it holds
    less than one checkpoint interval, and train-policy can neither resume it nor start in it."""
    if run.is_dir() and not list_checkpoints(run):
        print(f"removing {run}: stopped before its first checkpoint, nothing to resume; it starts afresh", flush=True)
        shutil.rmtree(run)


def eaivc_record(records: Path, task: str, policy: str, seed: int) -> Path:
    return records / task / f"{policy}-{seed}.json"


def keep_eaivc_records(root: Path, records: Path) -> None:
    """Copy each finished run's summary that has no record yet (with the commit that keeps it) to
    the table's records."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    for task, policy, seed in [(t, p, s) for t in EAIVC_TASKS for p in EAIVC_POLICIES for s in SEEDS]:
        run, path = eaivc_run(root, task, policy, seed), eaivc_record(records, task, policy, seed)
        if path.exists() or not (run / "eval/result.json").exists():
            continue
        summary = json.loads((run / "summary.json").read_text())
        with open(run / "metrics.csv") as f:  # the 20 validations: how far the best one stands out
            curve = {r["epoch"]: float(r["val_success"]) for r in csv.DictReader(f) if r["val_success"] != "nan"}
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"task": task, "policy": policy, "seed": seed, "commit": commit or None, **summary}
        record["validation_success_by_epoch"] = curve
        path.write_text(json.dumps(record, indent=1) + "\n")


def _val(summary: dict) -> int:  # successes of the best validation
    return round(summary["best_validation_success"] * EAIVC_VALIDATION_EPISODES)


def _test(summary: dict) -> int:  # successes of the best checkpoint on the held-out episodes
    return round(summary["test"]["success_rate"] * summary["test"]["episodes"])


def eaivc_table(records: Path) -> str:
    from policies import two_proportion_test, wilson_interval

    def summary(task, policy, seed):
        path = eaivc_record(records, task, policy, seed)
        s = json.loads(path.read_text()) if path.exists() else None
        return s if s and "test" in s else None

    cols = [(p, s) for p in EAIVC_POLICIES for s in SEEDS if any(summary(t, p, s) for t in EAIVC_TASKS)]
    cols = cols or [(p, SEEDS[0]) for p in EAIVC_POLICIES]
    heads = [f"({p}) seed {s}: best validation / held-out / mean validation" for p, s in cols]
    lines = ["| task | " + " | ".join(heads) + " |"]
    lines.append("|---" * (len(cols) + 1) + "|")
    totals = {c: [0, 0, 0, 0] for c in cols}  # validation successes, episodes; held-out successes, episodes
    for task in EAIVC_TASKS:
        row = []
        for c in cols:
            s = summary(task, *c)
            if s is None:
                row.append("not run")
                continue
            n_val, n_test, k_val, k_test = EAIVC_VALIDATION_EPISODES, s["test"]["episodes"], _val(s), _test(s)
            for i, v in enumerate((k_val, n_val, k_test, n_test)):
                totals[c][i] += v
            lo, hi = wilson_interval(k_test, n_test)
            # the mean over all validations: no selection on the same episodes (not in the early records)
            curve = list(s.get("validation_success_by_epoch", {}).values())
            mean = f"{sum(curve) / len(curve):.0%}" if curve else "-"
            row.append(f"{k_val}/{n_val} / {k_test}/{n_test} ({lo:.0%}-{hi:.0%}) / {mean}")
        lines.append(f"| {task[3:]} | " + " | ".join(row) + " |")
    avg = [f"{t[0] / t[1]:.0%} / {t[2] / t[3]:.0%}" if t[1] else "-" for t in totals.values()]
    lines.append("| **average over the tasks run** | " + " | ".join(avg) + " |")
    text = "\n".join(lines)
    for seed in SEEDS:  # (a) against (b) over the tasks run for both
        pairs = [(summary(t, "a", seed), summary(t, "b", seed)) for t in EAIVC_TASKS]
        pairs = [p for p in pairs if p[0] and p[1]]
        for name, rate, n in (("best validation", _val, EAIVC_VALIDATION_EPISODES), ("held-out", _test, None)):
            ka, na = sum(rate(a) for a, _ in pairs), sum(n or a["test"]["episodes"] for a, _ in pairs)
            kb, nb = sum(rate(b) for _, b in pairs), sum(n or b["test"]["episodes"] for _, b in pairs)
            if pairs:
                z, pv = two_proportion_test(ka, na, kb, nb)
                text += f"\n\nSeed {seed}, {name}, tasks run for both: {len(pairs)}, "
                text += f"(a) - (b): {ka / na - kb / nb:+.0%}: z = {z:.1f}, p = {pv:.3f}."
    legend = "; ".join(f"({k}) {v}" for k, v in EAIVC_NAMES.items())
    return text + f"\n\nSuccesses/episodes (95% Wilson interval of the held-out rate). Policies: {legend}.\n"


# ---- protocol "cortexbench": the earlier table ---------------------------------------------------

CORTEXBENCH_ROOT = Path("outputs/policy_results")
OWN_TASKS = {"push": "push", "pick_place": "pick_place"}
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
    if done.exists():
        return True
    print(line, flush=True)
    if dry_run:
        return True
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
    protocols = ("benchmark", "benchmark-wrist", "benchmark-sharp", "eai-vc", "cortexbench")
    parser.add_argument("--protocol", choices=protocols, default="benchmark")
    parser.add_argument(
        "--root", type=Path, help="default: outputs/policy_benchmark[_wrist|_sharp], policy_eaivc or policy_results"
    )
    parser.add_argument(
        "--tasks",
        help=f"comma-separated; benchmark: {','.join(BENCHMARK_TASKS)}; eai-vc: {','.join(EAIVC_TASKS)}; "
        f"cortexbench: {','.join(TASKS)}",
    )
    parser.add_argument("--encoders", help="comma-separated of a,b,c (eai-vc: a,b; default: all; cortexbench c,b,a)")
    parser.add_argument(
        "--seeds", default=",".join(map(str, SEEDS)), help="benchmark, eai-vc: training seeds (the table's columns)"
    )
    parser.add_argument(
        "--heads", default="cortexbench,chunking", help="cortexbench: comma-separated of " + ",".join(HEADS)
    )
    parser.add_argument(
        "--episodes", type=int, help="cortexbench: evaluation episodes per cell (default 50; MetaWorld 10)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands that would run")
    parser.add_argument("--table", action="store_true", help="only write the table of what is done")
    args = parser.parse_args()
    benchmark, sharp, eaivc = (
        args.protocol.startswith("benchmark"),
        args.protocol == "benchmark-sharp",
        args.protocol == "eai-vc",
    )
    wrist = sharp or args.protocol == "benchmark-wrist"
    default_root = SHARP_ROOT if sharp else WRIST_ROOT if wrist else BENCHMARK_ROOT if benchmark else CORTEXBENCH_ROOT
    root = args.root or (EAIVC_ROOT if eaivc else default_root)
    records = EAIVC_RECORDS if args.root is None else root / "records"  # eai-vc: what the table reads
    data_root = WRIST_ROOT / "data" if sharp and args.root is None else None  # benchmark-wrist's recordings
    all_tasks = BENCHMARK_TASKS if benchmark else EAIVC_TASKS if eaivc else TASKS
    all_policies = BENCHMARK_POLICIES if benchmark else EAIVC_POLICIES if eaivc else ENCODERS
    tasks = args.tasks.split(",") if args.tasks else list(all_tasks)
    encoders = (
        args.encoders.split(",")
        if args.encoders
        else (["c", "b", "a"] if args.protocol == "cortexbench" else list(all_policies))
    )
    seeds = args.seeds.split(",")
    checks = [("task", tasks, all_tasks), ("encoder", encoders, all_policies), ("seed", seeds, map(str, SEEDS))]
    for name, given, allowed in checks:
        allowed = list(allowed)
        if unknown := [x for x in given if x not in allowed]:
            parser.error(f"unknown {name} {unknown} for --protocol {args.protocol}: choose from {','.join(allowed)}")
    if not args.table:
        if benchmark:
            cells = [(t, e, int(s)) for t in tasks for e in encoders for s in seeds]
            steps = [(f"{t}-{e}-{s}", benchmark_commands(root, t, e, s, wrist, sharp, data_root)) for t, e, s in cells]
        elif eaivc:  # seed by seed, each task's (a) and (b) together: a partial table compares like with like
            cells = [(t, e, int(s)) for s in seeds for t in tasks for e in encoders]
            steps = [(f"{t}-{e}-{s}", eaivc_commands(root, t, e, s)) for t, e, s in cells]
        else:
            cells = [(t, e, h) for e in encoders for h in args.heads.split(",") for t in tasks]
            steps = [
                (f"{t}-{h}-{e}", commands(root, t, e, h, args.episodes or (10 if is_metaworld(t) else 50)))
                for t, e, h in cells
            ]
        for (name, cmds), cell_args in zip(steps, cells, strict=True):
            if cmds[-1][0].exists() or (eaivc and eaivc_record(records, *cell_args).exists()):
                continue  # the cell's result is there (its run folder may be elsewhere or removed)
            if eaivc and not args.dry_run:
                discard_stillborn(eaivc_run(root, *cell_args))
            for done, cmd in cmds:
                if not run_step(done, cmd, root / "logs" / f"{name}.log", args.dry_run):
                    break
            if eaivc and not args.dry_run:
                keep_eaivc_records(root, records)
    if eaivc and not args.dry_run:
        keep_eaivc_records(root, records)  # also runs finished by hand or by an earlier runner
    text = benchmark_table(root, wrist, sharp) if benchmark else eaivc_table(records) if eaivc else table(root)
    if not args.dry_run:
        root.mkdir(parents=True, exist_ok=True)
        (root / "table.md").write_text(text)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
