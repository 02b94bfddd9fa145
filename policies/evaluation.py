"""`pixio-robot eval-policy`: success rate in simulation, with a confidence interval.

    pixio-robot eval-policy policy=runs/push/checkpoints/best episodes=50 workers=2 out=results/push
    pixio-robot eval-policy policy=expert env=push episodes=50 out=results/push_expert

N episodes on seeds `seed .. seed+N-1` (default from 100000: disjoint from the collection
seeds, which start at 0, and from the validation seeds train-policy uses, from 50000), in
parallel environment processes (`envs.run_episodes`: the result does not depend on how many).
An episode succeeds when `info["is_success"]` is true at any step. Reported: the success rate
with its 95% Wilson score interval, the mean episode length, per-episode seed, success,
length, return and final state (agent_pos after the last action). The scripted expert runs
through the same code (`policy=expert`).

Result folder (written whole, replacing an old one only with overwrite=true):
    result.json           the numbers above, the environment, the policy, timings
    videos/seed_<s>.mp4   the first `videos` episodes (H.264; cameras side by side)
    episodes.rrd          the first `record` episodes in Rerun (images, state, actions, tool path)
"""

from __future__ import annotations

import functools
import math
import sys
import time
from pathlib import Path

import numpy as np

from pixio_robot.atomic import atomic_dir, atomic_path, read_json, write_json
from pixio_robot.errors import PixioError

from .commands import TEST_SEED, EvalPolicyConfig, command_config

FORMAT = "pixio_robot.policies.eval/1"


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a success rate (sensible at 0% and 100%, unlike p +- 2 sd)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else centre - half  # exact ends (the algebra leaves 1 - 1e-16)
    hi = 1.0 if successes == n else centre + half
    return lo, hi


def two_proportion_test(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """(z, two-sided p) of the pooled two-proportion z-test that rate 1 differs from rate 2.

    The test the README's "(a) beats (b)" claims use: z > 1.96 is a difference at the 5% level.
    """
    if min(n1, n2) < 1:
        raise ValueError("two_proportion_test needs at least one episode on each side")
    pooled = (k1 + k2) / (n1 + n2)
    sd = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if sd == 0:  # both 0% or both 100%: no evidence of a difference
        return 0.0, 1.0
    z = (k1 / n1 - k2 / n2) / sd
    return z, math.erfc(abs(z) / math.sqrt(2))


# ---- a policy in an environment --------------------------------------------------------------


class EnvPolicy:
    """A `PixioPolicy` behind the envs policy interface: `reset(seed)`, `policy(obs) -> action`."""

    def __init__(self, policy, env):
        import envs

        check_env(policy.config, envs.EnvSpec(env.spec.id, dict(env.spec.kwargs)), env)
        self.policy = policy.eval()
        self.keys = policy.config.image_keys
        self.cameras = list(getattr(env.unwrapped, "cameras", {}) or {})

    def reset(self, seed: int | None = None) -> None:
        self.policy.reset()

    def __call__(self, obs: dict) -> np.ndarray:
        import torch

        import envs

        feats = envs.observation_features(obs, self.cameras)
        batch = {key: feats[key][None] for key in self.keys}  # (1, H, W, 3) uint8, as the cache saw them
        if self.policy.config.oracle:
            batch["observation.environment_state"] = torch.from_numpy(feats["observation.environment_state"])[None]
        batch["observation.state"] = torch.from_numpy(np.asarray(feats["observation.state"], np.float32))[None]
        return self.policy.select_action(batch)[0].cpu().numpy().astype(np.float32)


def check_env(config, spec, env) -> None:
    """Refuse an environment the policy was not made for (action size, then the interface)."""
    import envs

    if config.env is None:
        raise PixioError("the policy records no environment: it cannot be checked against one")
    action_dim = int(np.prod(env.action_space.shape))
    trained = envs.EnvSpec.from_dict(config.env)
    if config.action_dim != action_dim:
        raise PixioError(
            f"the policy outputs {config.action_dim}-d actions (trained on {trained.name}) but "
            f"{spec.name} takes {action_dim}-d actions: evaluate it on {trained.name}"
        )
    spec.check_compatible(trained, what="the policy")


def make_env_policy(path: str, device: str, threads: int | None, env) -> EnvPolicy:
    """Worker-side factory (picklable through functools.partial): load the policy, bind it."""
    import torch

    from .modeling_pixio import load_policy

    if threads:
        # Small per-step batches gain little from threads, and spinning threads lose a lot
        # when the cores are shared (10x slower steps measured on a loaded 2-core machine).
        torch.set_num_threads(threads)
    return EnvPolicy(load_policy(path, device), env)


# ---- evaluation ------------------------------------------------------------------------------


def policy_env_spec(path: str | Path, env: str | None = None):
    """The environment of a saved policy, or `env` (same observation options) when given."""
    import envs

    from .modeling_pixio import load_policy_config

    config = load_policy_config(path)
    trained = envs.EnvSpec.from_dict(config.env)
    if env is None:
        return trained
    # Same task: the policy's observation options. Another task: its image size and that task's
    # own cameras, so that the checks name the real difference (action size, then task).
    other = envs.EnvSpec.parse(env)
    keep = ("cameras", "image_size", "control_hz") if other.id == trained.id else ("image_size",)
    return other.replace(**{k: trained.kwargs[k] for k in keep if k in trained.kwargs and k in other.kwargs})


def evaluate(
    policy: str | Path,
    spec=None,
    seeds=None,
    workers: int = 1,
    videos: int = 0,
    record: int = 0,
    out: str | Path | None = None,
    label: str | None = None,
    device: str = "cpu",
    progress: bool = True,
    threads: int | None = 1,
) -> dict:
    """Run `policy` (a saved policy folder, or "expert") on `seeds` in `spec` (default: the
    policy's environment) and return the result dict (also written to `out`/result.json)."""
    seeds = [int(s) for s in (seeds if seeds is not None else range(TEST_SEED, TEST_SEED + 50))]
    if not seeds:
        raise PixioError("no episodes to run: pass episodes=1 or more")
    if workers < 1:
        raise PixioError(f"workers={workers}: use 1 or more")
    spec, factory, meta = _prepare(policy, spec, device, threads)
    label = label or _label(policy)
    import torch

    threads_before = torch.get_num_threads()  # an in-process worker changes this process's
    started = time.perf_counter()
    with _result_folder(out) as folder:
        writer = _EpisodeWriter(folder, meta, videos, record)
        try:
            rows, first = _run(spec, seeds, factory, workers, writer, progress, started)
        finally:
            torch.set_num_threads(threads_before)
            writer.close()
        seconds = time.perf_counter() - started
        result = summarise(rows, label, str(policy), spec, workers, seconds, first, writer.files)
        if folder:
            write_json(folder / "result.json", result)
    return result


def _prepare(policy, spec, device: str, threads: int | None):
    """(environment spec, policy factory for the workers, environment metadata), checked
    here before any worker starts or file is written."""
    import envs
    from envs.dataset import env_metadata

    expert = str(policy) == "expert"
    if expert:
        if spec is None:
            raise PixioError("policy=expert needs env=<environment>")
        factory = envs.expert_policy()
    else:
        spec = spec or policy_env_spec(policy)
        factory = functools.partial(make_env_policy, str(policy), device, threads)
    env = spec.make()
    try:
        if not expert:
            from .modeling_pixio import load_policy_config

            check_env(load_policy_config(policy), spec, env)
        return spec, factory, env_metadata(spec, env)
    finally:
        env.close()


def _run(spec, seeds: list[int], factory, workers: int, writer, progress: bool, started: float):
    """The episodes' rows, and the seconds until the first one was in (the workers' start-up)."""
    from tqdm import tqdm

    import envs

    rows, first = [], None
    episodes = envs.run_episodes(spec, seeds, factory, workers=workers, record=writer.keeps_images)
    bar = tqdm(total=len(seeds), desc=f"eval {spec.name}", unit="ep", disable=not progress, file=sys.stderr)
    try:
        for i, ep in enumerate(episodes):
            if first is None:  # timed on arrival, before this process writes its video or recording
                first = time.perf_counter() - started
            rows.append(
                {
                    "seed": ep.seed,
                    "success": bool(ep.successes.any()),
                    "length": ep.length,
                    "return": float(ep.rewards.sum(dtype=np.float64)),
                    "final_state": None if ep.final_state is None else [float(v) for v in ep.final_state],
                }
            )
            writer.add(i, ep)
            bar.update(1)
            bar.set_postfix(success=f"{sum(r['success'] for r in rows) / len(rows):.0%}")
    finally:
        bar.close()
        episodes.close()
    return rows, first


class _EpisodeWriter:
    """MP4s of the first `videos` episodes and a Rerun recording of the first `record`."""

    def __init__(self, folder: Path | None, meta: dict, videos: int, record: int):
        self.folder, self.meta, self.videos, self.record = folder, meta, videos, record
        self.keeps_images = folder is not None and (videos > 0 or record > 0)
        self.files = {"videos": [], "recording": None}
        self.recording = _recording(folder / "episodes.rrd") if folder and record > 0 else None
        self.rec = self.recording.__enter__() if self.recording else None
        self.frame = 0
        if self.rec is not None:
            from envs.replay import log_static

            log_static(self.rec, meta)

    def add(self, i: int, ep) -> None:
        if self.folder and i < self.videos and ep.images:
            name = f"videos/seed_{ep.seed}.mp4"
            write_mp4(self.folder / name, ep.images, self.meta["fps"])
            self.files["videos"].append(name)
        if self.rec is not None and i < self.record:
            from envs.replay import log_episode

            log_episode(self.rec, self.meta, i, ep.images, ep.states, ep.actions, ep.successes, self.frame)
            self.frame += ep.length

    def close(self) -> None:
        if self.recording is not None:
            self.recording.__exit__(None, None, None)
            self.files["recording"] = "episodes.rrd"


def summarise(
    rows: list[dict], label: str, policy: str, spec, workers: int, seconds: float, first: float | None, files: dict
) -> dict:
    """The result dict; `seconds` for the whole run, `first` until the first episode was in."""
    n = len(rows)
    k = sum(r["success"] for r in rows)
    lo, hi = wilson_interval(k, n)
    lengths = [r["length"] for r in rows]
    ok = [r["length"] for r in rows if r["success"]]
    return {
        "format": FORMAT,
        "label": label,
        "policy": policy,
        "env": spec.to_dict(),
        "env_name": spec.name,
        "episodes": n,
        "seeds": [rows[0]["seed"], rows[-1]["seed"]] if rows else [],
        "successes": k,
        "success_rate": k / n if n else 0.0,
        "ci95": [lo, hi],
        "ci_method": "Wilson score interval, 95%",
        "mean_length": float(np.mean(lengths)) if lengths else 0.0,
        "mean_length_successful": float(np.mean(ok)) if ok else None,
        "workers": workers,
        "seconds": seconds,
        "episodes_per_minute": 60 * n / seconds if seconds > 0 else None,
        "seconds_to_first_episode": first,
        # the rate once running: without the start-up of the worker processes
        "episodes_per_minute_after_first": 60 * (n - 1) / (seconds - first) if n > 1 and seconds > first else None,
        "files": files,
        "per_episode": rows,
    }


def _label(policy) -> str:
    if str(policy) == "expert":
        return "expert"
    path = Path(policy).resolve()
    if path.parent.name == "checkpoints":  # runs/<run>/checkpoints/<best|last>
        return f"{path.parent.parent.name}/{path.name}"
    return path.name


class _NoFolder:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _result_folder(out):
    return atomic_dir(out) if out is not None else _NoFolder()


def _recording(path: Path):
    from pixio_robot.viz import rerun_recording

    return rerun_recording(path, application_id="pixio_robot_eval")


def write_mp4(path: Path, images: dict[str, np.ndarray], fps: int) -> None:
    """Camera image sequences (T, H, W, 3) side by side into an H.264 MP4, atomically."""
    import av

    height = max(v.shape[1] for v in images.values())
    frames = np.concatenate(
        [np.pad(v, ((0, 0), (0, height - v.shape[1]), (0, 0), (0, 0))) for v in images.values()], axis=2
    )
    t, h, w, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))  # yuv420p needs even sides
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=int(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def eval_policy(cfg: EvalPolicyConfig | None = None, **options) -> dict:
    """`pixio-robot eval-policy` as a function: `cfg`, or its fields as keywords, e.g.
    `eval_policy(policy="runs/push/checkpoints/best", episodes=20, workers=2, out="results/push")`.
    Checks everything before it writes, runs with a progress bar (`progress=False`: none) and
    returns the result dict that it also writes to `out`/result.json (see `summarise`)."""
    import envs

    cfg = command_config("eval-policy", EvalPolicyConfig, cfg, options)
    if cfg.episodes < 1:
        raise PixioError(f"episodes={cfg.episodes}: run at least 1")
    if cfg.threads < 1:
        raise PixioError(f"threads={cfg.threads}: use 1 or more")
    out = Path(cfg.out)
    if (out / "result.json").exists() and not cfg.overwrite:
        raise PixioError(f"{out} already holds a result: pass overwrite=true to replace it, or choose another out=")
    if out.exists() and not (out / "result.json").exists() and (not out.is_dir() or any(out.iterdir())):
        raise PixioError(f"out={out} holds something other than an evaluation result: choose another folder")
    if cfg.policy == "expert":
        if cfg.env is None:
            raise PixioError("policy=expert needs env=<environment>, e.g. env=push")
        options = {"image_size": cfg.image_size} if cfg.image_size else {}
        if cfg.cameras is not None:
            options["cameras"] = list(cfg.cameras)
        spec = envs.EnvSpec.parse(cfg.env, **options)
    else:
        if cfg.image_size or cfg.cameras:
            raise PixioError("image_size= and cameras= are for policy=expert: a policy sees what it was trained on")
        spec = policy_env_spec(cfg.policy, cfg.env)
    if cfg.time_limit is not None:
        if cfg.time_limit < 1:
            raise PixioError(f"time_limit={cfg.time_limit}: use 1 or more steps")
        spec = spec.replace(time_limit=cfg.time_limit)
    seeds = range(cfg.seed, cfg.seed + cfg.episodes)
    return evaluate(
        cfg.policy,
        spec,
        seeds,
        cfg.workers,
        cfg.videos,
        cfg.record,
        out,
        cfg.label,
        cfg.device,
        cfg.progress,
        cfg.threads,
    )


def run(cfg: EvalPolicyConfig) -> int:
    result = eval_policy(cfg)
    lo, hi = result["ci95"]
    print(
        f"{result['label']} on {result['env_name']}: {result['successes']}/{result['episodes']} = "
        f"{result['success_rate']:.1%} success (95% CI {lo:.1%}-{hi:.1%}), mean length {result['mean_length']:.1f} "
        f"steps, seeds {result['seeds'][0]}..{result['seeds'][1]}; {Path(cfg.out) / 'result.json'}"
    )
    return 0


def read_result(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "result.json"
    if not path.is_file():
        raise PixioError(f"{path}: no such result file (eval-policy writes <out>/result.json)")
    return read_json(path, FORMAT, "an eval-policy result")
