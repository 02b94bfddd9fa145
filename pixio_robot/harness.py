"""The one resumable-run harness behind every training job (pretrain, distill, train-recon,
train-policy).

A job brings its data, its model and a step function (forward and backward of one optimizer
step); the harness owns the rest, once:

- **checkpoints**: `run_dir/checkpoints/step-XXXXXXXX.pt`, written atomically (temporary file,
  fsync, rename), the newest `keep` kept, each holding the model, the optimizer, the step, the
  RNG states of every rank, the loss guard and the job's own state (its data position). Only
  tensors, numbers and strings are stored, so files load with `torch.load(weights_only=True)`.
  A sharded (FSDP) run keeps model and optimizer in `step-XXXXXXXX.dcp/` beside the step file
  instead (torch.distributed.checkpoint: every rank writes its own shards, and any number of
  ranks reads them back); the step file is written last, so it marks the pair complete;
- **resume rules**: a resumed run must have the saved run's options except those the job
  declares changeable (`changed_options`);
- **one schedule** (linear warm-up, then half a cosine: MAE's, per step) and **one parameter
  group rule** (timm's: no weight decay on biases, norms and the job's listed tokens);
- **scalars** to `metrics.csv` and a Rerun recording, means over the logging window;
- **the loss guard**: a non-finite loss (or one far above its running mean) never reaches the
  weights; too many in a row stop the run with the last good checkpoint kept.

What each job writes for users (the encoder, the head, the LeRobot policy folder) is its
`export`, called after each checkpoint.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import random
import re
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .atomic import TMP_PREFIX, atomic_path
from .errors import PixioError
from .viz import rerun_recording

FORMAT = "pixio-robot/training-checkpoint"
_NAME = re.compile(r"^step-(\d+)\.pt$")


# ---- checkpoints ------------------------------------------------------------------------------


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints, oldest first (temporary files are ignored)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)))


def save_checkpoint(run_dir: str | Path, step: int, payload: dict, keep: int) -> Path:
    path = checkpoint_dir(run_dir) / f"step-{step:08d}.pt"
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "step": step} | payload, tmp)
    for _, old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
        shutil.rmtree(old.with_suffix(SHARDS), ignore_errors=True)
    return path


# ---- sharded weights (FSDP) ---------------------------------------------------------------------

SHARDS = ".dcp"  # suffix of a step's torch.distributed.checkpoint folder


def save_shards(run_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, is_main: bool) -> str:
    """Every rank writes its shards of model and optimizer into a temporary folder, which rank
    0 then renames to `step-XXXXXXXX.dcp` (dcp.save returns on rank 0 only after every rank has
    written). Collective; the folder's name, for the step file."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = checkpoint_dir(run_dir) / f"step-{step:08d}{SHARDS}"
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    with _quiet_in_one_process():
        dcp.save(state, checkpoint_id=_shards_tmp(final), no_dist=_one_process())
    if is_main:
        shutil.rmtree(final, ignore_errors=True)  # left by a run killed before it wrote the step file
        os.replace(_shards_tmp(final), final)
    return final.name


def load_shards(ckpt: dict, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Model and optimizer from a step's shards, resharded to this run's ranks. Collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)  # the layout to read into
    state = {"model": model_state, "optimizer": optim_state}
    with _quiet_in_one_process():
        dcp.load(state, checkpoint_id=_shards_of(ckpt), no_dist=_one_process())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def read_sharded_model(ckpt: dict) -> dict[str, torch.Tensor]:
    """The whole model's weights from a step's shards, in one process (export, view, curate)."""
    import torch.distributed.checkpoint as dcp

    reader = dcp.FileSystemReader(_shards_of(ckpt))
    meta = reader.read_metadata().state_dict_metadata
    model = {
        k.removeprefix("model."): torch.empty(m.size, dtype=m.properties.dtype)
        for k, m in meta.items()
        if k.startswith("model.") and isinstance(m, dcp.TensorStorageMetadata)
    }
    with _quiet_in_one_process():
        dcp.load({"model": model}, storage_reader=reader, no_dist=True)
    return model


def _one_process() -> bool:
    return not torch.distributed.is_initialized()


@contextlib.contextmanager
def _quiet_in_one_process():
    """torch.distributed.checkpoint warns on every single-process read or write, which is
    intended here (a sharded run resumed, exported or viewed in one process)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is (disabled|unavailable)")
        yield


def _shards_of(ckpt: dict) -> Path:
    folder = Path(ckpt["path"]).parent / ckpt["sharded"]
    if not folder.is_dir():
        raise PixioError(f"{ckpt['path']}: its sharded weights {folder} are missing (copy the folder beside it)")
    return folder


def _shards_tmp(final: Path) -> Path:
    return final.parent / f"{TMP_PREFIX}{final.name}.part"


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint file, or a run folder's latest readable one."""
    path = Path(path)
    if path.is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise PixioError(f"{path}: no checkpoints in {checkpoint_dir(path)}")
        path = latest
    elif not path.exists():
        raise PixioError(f"{path}: no such checkpoint (give a step-*.pt file or a run folder)")
    ckpt = _read(path)
    if "sharded" in ckpt:
        ckpt["model"] = read_sharded_model(ckpt)
    return ckpt


def _read(path: Path) -> dict:
    try:
        # mmap: ranks resuming a large run share the file's pages instead of each reading a copy
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise PixioError(f"{path}: not a readable training checkpoint ({e.__class__.__name__})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise PixioError(
            f"{path}: not a pixio-robot training checkpoint (encoder files load with pixio_robot.load_encoder)"
        )
    ckpt["path"] = str(path)
    return ckpt


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint that loads. Writes are atomic, so this is the newest file unless
    something outside the toolkit damaged it; then the one before it, with a warning."""
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            _read(path)
            return path
        except PixioError as e:
            print(f"warning: {e}; trying the previous checkpoint", file=sys.stderr)
    return None


def remove_stale_temporaries(folder: str | Path) -> None:
    """Delete temporary files and folders left by a killed writer (they are never read), and
    shard folders whose step file was never written."""
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        for p in folder.glob(f"step-*{SHARDS}"):
            if not p.with_suffix(".pt").exists():
                shutil.rmtree(p, ignore_errors=True)


def rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": json.dumps(np.random.get_state(legacy=False), default=_to_list),
        "python": json.dumps(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np_state = json.loads(state["numpy"])
    np_state["state"] = {
        k: np.array(v, dtype=np.uint32) if isinstance(v, list) else v for k, v in np_state["state"].items()
    }
    np.random.set_state(np_state)
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_list(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.integer):
        return int(x)
    raise TypeError(type(x))


# ---- resume rules -----------------------------------------------------------------------------


def flat(d: dict, prefix: str = "") -> dict:
    """Nested options as dotted keys: {"run": {"seed": 0}} -> {"run.seed": 0}."""
    out = {}
    for k, v in d.items():
        out |= flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def changed_options(saved: dict, now: dict, may_change: Collection[str]) -> list[str]:
    """Dotted options whose value differs between a saved run and this command, other than
    those in `may_change` (a name covers its nested options: "run" covers "run.seed")."""
    saved, now = flat(saved), flat(now)

    def allowed(key: str) -> bool:
        return any(key == m or key.startswith(m + ".") for m in may_change)

    return sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k) and not allowed(k))


# ---- optimisation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class WarmupCosine:
    """Linear warm-up from 0 over `warmup_steps`, then half a cosine down to `min_lr` at
    `total_steps` (MAE's schedule, evaluated per optimizer step). `min_lr = peak` with no
    warm-up is a constant learning rate."""

    peak: float
    warmup_steps: int
    total_steps: int
    min_lr: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.peak * step / self.warmup_steps
        t = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return self.min_lr + (self.peak - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def param_groups(model: nn.Module, weight_decay: float, no_decay: Collection[str] = ()) -> list[dict]:
    """timm's rule (MAE's and the official Pixio code's): no decay on biases, norm weights
    (every parameter with one dimension) and the `no_decay` names; decay on the rest."""
    from timm.optim import param_groups_weight_decay

    return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=no_decay)


@dataclass
class LossGuard:
    """Flags losses that are non-finite or more than `factor` times their running mean (an
    exponential moving average over good steps, trusted after `warmup` of them). The default
    stops at the first non-finite loss."""

    factor: float = math.inf
    patience: int = 1
    warmup: int = 20
    mean: float | None = None
    seen: int = 0
    bad_in_a_row: int = 0

    def check(self, loss: float) -> bool:
        """True for a good loss (update the weights), False for a bad one (skip the step)."""
        too_big = self.mean is not None and self.seen >= self.warmup and loss > self.factor * self.mean
        if not math.isfinite(loss) or too_big:
            self.bad_in_a_row += 1
            return False
        self.bad_in_a_row = 0
        self.seen += 1
        self.mean = loss if self.mean is None else 0.98 * self.mean + 0.02 * loss
        return True

    @property
    def exploded(self) -> bool:
        return self.bad_in_a_row >= self.patience


# ---- scalars ----------------------------------------------------------------------------------


class ScalarLog:
    """Scalars per step to `csv_path` (one row per call, flushed) and to a Rerun stream.

    Opening with `resume_step` drops rows logged after that step (they belong to the part of an
    interrupted run that is about to be redone), so a resumed run's CSV reads as one run.
    """

    def __init__(self, csv_path: str | os.PathLike, recording=None, resume_step: int | None = None):
        self.path = Path(csv_path)
        self.rec = recording
        self.columns: list[str] | None = None
        rows: list[dict] = []
        if resume_step is not None and self.path.exists():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(float(r["step"])) <= resume_step]
            if rows:
                self.columns = list(rows[0])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
            if self.columns:
                writer = csv.DictWriter(f, self.columns)
                writer.writeheader()
                writer.writerows(rows)
        self._file = open(self.path, "a", newline="")

    def log(self, step: int, **values: float) -> None:
        if self.columns is None:
            self.columns = ["step", *values]
            csv.DictWriter(self._file, self.columns).writeheader()
        row = {"step": step} | {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in values.items()}
        csv.DictWriter(self._file, self.columns, extrasaction="ignore").writerow(row)
        self._file.flush()
        if self.rec is not None:
            import rerun as rr

            self.rec.set_time("step", sequence=step)
            for k, v in values.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.rec.log(f"metrics/{k}", rr.Scalars([float(v)]))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ScalarLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def scalar_log(run_dir: Path, step: int, application_id: str, rrd: str = "metrics.rrd") -> Iterator[ScalarLog]:
    """`metrics.csv` + a Rerun recording. A resumed run (`step` > 0) drops the CSV rows after
    `step` and replays the earlier ones into the new recording, so both cover the whole run."""
    csv_path = run_dir / "metrics.csv"
    with rerun_recording(run_dir / rrd, application_id=application_id) as rec:
        log = ScalarLog(csv_path, rec, resume_step=step if step else None)
        if step and csv_path.exists():
            _replay(csv_path, rec)
        try:
            yield log
        finally:
            log.close()


def _replay(csv_path: Path, rec) -> None:
    import rerun as rr

    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            rec.set_time("step", sequence=int(float(row.pop("step"))))
            for k, v in row.items():
                with contextlib.suppress(TypeError, ValueError):
                    if math.isfinite(float(v)):
                        rec.log(f"metrics/{k}", rr.Scalars([float(v)]))


# ---- the loop ---------------------------------------------------------------------------------


def _no_scalars(step: int, logging: bool) -> dict:
    return {}


def _no_state() -> dict:
    return {}


def _one(x):
    return [x]


@dataclass
class Run:
    """One job's optimisation from `start` to `total` steps.

    `step_fn(step)` runs the forward and backward passes of optimizer step `step` (0-based) and
    returns the loss (already averaged over ranks) and extra scalars. After each finished step
    `after_step(done, logging)` may do more (validate, at epoch ends) and returns scalars that
    are logged when `logging` (the same keys every time: the CSV's header is fixed). At each
    save `state()` gives the job's resumable state (JSON text or tensors: its data position)
    and `export(done)` writes its user-facing files. In a multi-process run every rank calls
    `run`; `gather` collects one object per rank and only `is_main` writes.
    """

    kind: str
    run_dir: Path
    config: dict
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Callable[[int], float]
    total: int
    step_fn: Callable[[int], tuple[float, dict]]
    samples_per_step: int
    log_every: int
    save_every: int
    keep: int = 2
    guard: LossGuard = field(default_factory=LossGuard)
    grad_clip: float | None = None
    advice: str = "lower the learning rate"  # what to do when the loss explodes
    after_step: Callable[[int, bool], dict] = _no_scalars
    state: Callable[[], dict] = _no_state
    export: Callable[[int], None] | None = None
    gather: Callable = _one
    rank: int = 0
    world_size: int = 1
    is_main: bool = True
    progress: bool = True
    save_on_interrupt: bool = True
    sharded: bool = False  # FSDP: weights and optimizer saved and restored as shards (collective)
    last_saved: Path | None = None

    # -- resuming --

    def resume(self, ckpt: dict) -> int:
        """Restore model, optimizer, RNG and guard from a checkpoint; the step to go on from."""
        if ("sharded" in ckpt) != self.sharded:
            raise PixioError(
                f"{ckpt['path']} holds {'sharded' if 'sharded' in ckpt else 'whole'} weights and this run keeps them "
                f"{'sharded' if self.sharded else 'whole'}: resume with the parallelism the run was started with"
            )
        if self.sharded:
            load_shards(ckpt, self.model, self.optimizer)
        else:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        rngs = ckpt["rng"]
        if len(rngs) == self.world_size:  # another number of ranks starts from the seeds
            set_rng_state(rngs[self.rank])
        guard = json.loads(ckpt["guard"])
        self.guard.mean, self.guard.seen = guard["mean"], guard["seen"]
        self.last_saved = Path(ckpt["path"])
        return int(ckpt["step"])

    def fit(self, ckpt: dict | None, application_id: str, rrd: str = "metrics.rrd") -> int:
        """Resume from `ckpt` (if any) and train to `total` with the scalar log open; the step
        reached (a run already at `total` says so and returns at once)."""
        start = self.resume(ckpt) if ckpt is not None else 0
        if start >= self.total:
            print(
                f"{self.run_dir}: already trained for {start} steps (total {self.total}): raise the steps to train on"
            )
            return start
        with scalar_log(self.run_dir, start, application_id, rrd=rrd) as log:
            return self.run(start, log=log)

    # -- the loop --

    def run(self, start: int, stop: int | None = None, log: ScalarLog | None = None) -> int:
        """Train from step `start` to `stop` (default: `total`); the step reached."""
        stop = self.total if stop is None else min(stop, self.total)
        from tqdm import tqdm

        bar = tqdm(
            total=self.total,
            initial=start,
            desc=self.kind,
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
            disable=not (self.is_main and self.progress),
        )
        window: list[tuple[float, dict]] = []
        t0 = time.perf_counter()
        done = start
        self.model.train()
        try:
            for step in range(start, stop):
                lr = self.schedule(step)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                loss, extra = self.step_fn(step)
                self._update(step, loss)
                done = step + 1
                window.append((loss, extra))
                logging = done % self.log_every == 0 or done == stop
                scalars = self.after_step(done, logging)
                if logging:
                    seconds, t0 = time.perf_counter() - t0, time.perf_counter()
                    self._log(log, done, lr, window, scalars, seconds)
                    window = []
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
                if done % self.save_every == 0 or done == stop:
                    self.save(done, loss)
        except KeyboardInterrupt:
            if self.save_on_interrupt and self.guard.bad_in_a_row == 0 and done > self._saved_step():
                self.save(done, math.nan)
            where = self.last_saved or "nothing"
            print(f"\ninterrupted: {where} is saved; the same command continues", file=sys.stderr)
            raise
        finally:
            bar.close()
        return done

    def _update(self, step: int, loss: float) -> None:
        """The optimizer step for a good loss (and finite gradients); a skipped step otherwise."""
        good = self.guard.check(loss)
        if good and self.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip or math.inf)
            if not torch.isfinite(norm):
                good, self.guard.bad_in_a_row = False, self.guard.bad_in_a_row + 1
        if good:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.guard.exploded:
            mean = math.nan if self.guard.mean is None else self.guard.mean
            kept = f"the last good checkpoint {self.last_saved} (step {self._saved_step()}) is kept"
            raise PixioError(
                f"loss exploded at step {step + 1} (loss {loss:.4g}, running mean {mean:.4g}, "
                f"{self.guard.bad_in_a_row} bad step(s) in a row): training stopped before the update; "
                f"{kept if self.last_saved else 'no checkpoint was written yet'}; {self.advice}"
            )

    def _saved_step(self) -> int:
        m = _NAME.match(self.last_saved.name) if self.last_saved else None
        return int(m.group(1)) if m else 0

    def _log(self, log, done: int, lr: float, window: list, scalars: dict, seconds: float) -> None:
        mean = {"loss": sum(w[0] for w in window) / len(window)}
        for k in window[0][1]:
            mean[k] = sum(float(w[1][k]) for w in window) / len(window)
        rate = self.samples_per_step * len(window) / max(seconds, 1e-9)
        values = mean | {"lr": lr, "samples_per_s": rate} | scalars
        if log is not None:
            log.log(done, **values)
        if self.is_main and not self.progress:
            print(f"{self.kind} step {done}/{self.total} loss {mean['loss']:.4f} lr {lr:.3g}", flush=True)

    def save(self, step: int, loss: float) -> None:
        rngs = self.gather(rng_state())
        job = self.state()  # collective in multi-process jobs: every rank calls it
        shards = save_shards(self.run_dir, step, self.model, self.optimizer, self.is_main) if self.sharded else None
        if not self.is_main:
            return
        if shards is not None:
            weights = {"sharded": shards}
        else:
            weights = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        payload = (
            weights
            | {
                "kind": self.kind,
                "config": json.dumps(self.config),
                "rng": rngs,
                "guard": json.dumps({"mean": self.guard.mean, "seen": self.guard.seen}),
                "loss": loss,
            }
            | job
        )
        self.last_saved = save_checkpoint(self.run_dir, step, payload, self.keep)
        if self.export is not None:
            self.export(step)


def resume_checkpoint(
    run_dir: Path, config: dict, may_change: Collection[str], option_hint: str, added: dict | None = None
) -> dict | None:
    """The run folder's latest checkpoint if its options agree with `config` (except
    `may_change`); None when there is none. `option_hint` names what to do otherwise. `added`:
    dotted options a job introduced after runs may have been saved, with the value those runs
    had, so that an older run is compared (and its refusal worded) as what it was."""
    path = latest_checkpoint(run_dir)
    if path is None:
        return None
    ckpt = _read(path)
    saved_config = {**(added or {}), **flat(json.loads(ckpt["config"]))}
    changed = changed_options(saved_config, config, may_change)
    if changed:
        k = changed[0]
        saved, now = saved_config.get(k), flat(config).get(k)
        raise PixioError(
            f"cannot resume {run_dir}: it was started with {k}={saved!r}, this command has {k}={now!r}; keep the "
            f"run's options or {option_hint} (may change: {', '.join(sorted(may_change))})"
        )
    return ckpt
