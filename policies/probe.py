"""`pixio-robot probe`: does an encoder know where the objects are?

The cheapest check of an encoder for robot learning, before any policy is trained: render N
reset scenes of an environment (object positions drawn by the task), encode one camera image
of each, and fit ridge regressions from the encoder's last-block patch tokens (`block=` reads
another) and, separately, from its global embedding to the objects' positions. The error on
held-out scenes, per coordinate in centimetres, says how precisely a linear read-out of the
frozen features can localise the objects; policies need about 1-2 cm. The same architecture
random-initialised, and predicting the training mean, are the two baselines it is read against.
The random baseline is the mean over several inits (`random_inits`, 5 by default): one init's
error varies by 5-7 % between seeds, as much as the gains being measured.

    pixio-robot probe encoder=sim_vitn16_v2 env=push scenes=1000 out=probe.json

Ridge regression is solved in its dual form (an n x n linear kernel, so a 200k-wide token map
costs no more than a short one) on standardised features; the penalty is chosen per target by
exact leave-one-out error on the training scenes from a log-spaced grid.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from pixio_robot.atomic import write_json
from pixio_robot.errors import PixioError

from .commands import ProbeConfig

FORMAT = "pixio-robot/probe/1"
METAWORLD_POSITIONS = {"object_x": 4, "object_y": 5, "object_z": 6, "goal_x": 36, "goal_y": 37, "goal_z": 38}
ALPHAS = np.logspace(-4, 4, 17)  # times the mean of the kernel's diagonal


@dataclass
class Scenes:
    images: np.ndarray  # (N, H, W, 3) uint8
    targets: np.ndarray  # (N, T) metres
    names: list[str]


def render_scenes(
    env: str, seeds: range, camera: str | None, image_size: int, progress: bool = True, **options
) -> Scenes:
    """One image of each reset scene and the positions of its objects (names ending in _x/_y/_z).
    `options` are environment options (e.g. difficulty="hard")."""
    from tqdm import tqdm

    from envs.registry import EnvSpec

    probe_spec = EnvSpec.parse(env, **options)
    cameras = [camera] if camera else None
    spec = probe_spec.replace(
        image_size=image_size, environment_state=True, **({"cameras": cameras} if cameras else {})
    )
    cams = spec.kwargs.get("cameras")
    if not cams:
        raise PixioError(f"env={env} has no camera to render: pass camera=...")
    handle = spec.make()
    try:
        base = handle.unwrapped
        if camera is not None and camera not in base.camera_names:
            raise PixioError(f"env={env} has no camera {camera!r}: choose one of {', '.join(base.camera_names)}")
        names, index = _position_targets(spec.name, list(base.object_state_names))
        images, targets = [], []
        for seed in tqdm(seeds, desc=f"render {spec.name}", unit="scene", disable=not progress, file=sys.stderr):
            obs, _ = handle.reset(seed=seed)
            pixels = obs["pixels"]
            images.append(pixels[cams[0]] if isinstance(pixels, dict) else pixels)
            targets.append(np.asarray(obs["environment_state"], np.float64)[index])
    finally:
        handle.close()
    return Scenes(np.stack(images), np.stack(targets), names)


def _position_targets(env_name: str, state_names: list[str]) -> tuple[list[str], list[int]]:
    if env_name.startswith("metaworld/"):
        return list(METAWORLD_POSITIONS), list(METAWORLD_POSITIONS.values())
    pairs = [(n, i) for i, n in enumerate(state_names) if n.endswith(("_x", "_y", "_z"))]
    if not pairs:
        raise PixioError(f"env={env_name} has no object positions to probe")
    return [n for n, _ in pairs], [i for _, i in pairs]


def ridge_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray) -> np.ndarray:
    """Ridge predictions for `test_x`, penalty per target by leave-one-out error (dual form)."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a = (train_x - mean) / std
    b = (test_x - mean) / std
    y_mean = train_y.mean(0)
    y = train_y - y_mean
    kernel = a @ a.T
    evals, evecs = np.linalg.eigh(kernel)
    evals = np.clip(evals, 0, None)
    scale = float(np.mean(np.diag(kernel))) or 1.0
    proj = evecs.T @ y  # (n, T)
    best_err, best_coef = np.full(y.shape[1], np.inf), np.zeros_like(y)
    for alpha in ALPHAS * scale:
        shrink = 1.0 / (evals + alpha)
        coef = evecs @ (shrink[:, None] * proj)  # dual coefficients (K + aI)^-1 y
        hat_diag = np.einsum("ij,j,ij->i", evecs, evals * shrink, evecs)
        loo = (y - kernel @ coef) / (1.0 - hat_diag)[:, None]
        err = (loo**2).mean(0)
        better = err < best_err
        best_err[better], best_coef[:, better] = err[better], coef[:, better]
    return b @ (a.T @ best_coef) + y_mean


def rmse_cm(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return 100.0 * np.sqrt(((pred - truth) ** 2).mean(0))


def encode(
    encoder, images: np.ndarray, image_size: int, device, progress: bool, block: int = -1
) -> dict[str, np.ndarray]:
    from pixio_robot.extract import FeatureExtractor

    extractor = FeatureExtractor(encoder, size=image_size, blocks=block, patches=True, batch_size=32, device=device)
    feats = extractor(images, progress=progress, desc="encode")
    block = extractor.blocks[0]
    return {
        "patches": feats[f"patches.block{block}"].flatten(1).numpy().astype(np.float64),
        "global": feats["global"].numpy().astype(np.float64),
    }


def probe(cfg: ProbeConfig) -> dict:
    """The probe as a function: returns the result dict (also written to `cfg.out`)."""
    from pixio_robot.checkpoints import load_encoder
    from pixio_robot.devices import pick_device
    from pixio_robot.encoder import PixioViT

    if not 0 < cfg.holdout < 1:
        raise PixioError(f"holdout={cfg.holdout}: give a fraction between 0 and 1, e.g. 0.2")
    n_test = round(cfg.scenes * cfg.holdout)
    if n_test < 2 or cfg.scenes - n_test < 8:
        raise PixioError(
            f"scenes={cfg.scenes} is too few for a {cfg.holdout:.0%} hold-out (needs >= 2 test and >= 8 training "
            "scenes): render more scenes, e.g. scenes=1000"
        )
    if cfg.compare_random and cfg.random_inits < 1:
        raise PixioError(
            f"random_inits={cfg.random_inits}: give the number of random-initialised encoders to average "
            "(at least 1), or compare_random=false"
        )
    if cfg.out is not None and not cfg.out.endswith(".json"):
        raise PixioError(f"out={cfg.out}: the result is a JSON file: name it *.json")
    from envs.registry import EnvSpec

    options = {} if cfg.difficulty is None else {"difficulty": cfg.difficulty}
    EnvSpec.parse(cfg.env, **options).make().close()  # bad env options are refused before any work
    encoder = load_encoder(cfg.encoder).eval()
    (block,) = encoder.block_indices(cfg.block)  # an unknown block is refused before any rendering
    size = cfg.image_size or int(encoder.config["img_size"][0])
    device = pick_device(cfg.device)
    started = time.perf_counter()
    seeds = range(cfg.seed, cfg.seed + cfg.scenes)
    scenes = render_scenes(cfg.env, seeds, cfg.camera, size, cfg.progress, **options)
    test = np.arange(cfg.scenes) >= cfg.scenes - n_test  # the last seeds are held out
    truth = scenes.targets[test]
    rows = {"mean": rmse_cm(np.broadcast_to(scenes.targets[~test].mean(0), truth.shape), truth)}

    def errors(enc) -> dict[str, np.ndarray]:
        with torch.no_grad():
            feats = encode(enc, scenes.images, size, device, cfg.progress, block)
        train_y = scenes.targets[~test]
        return {kind: rmse_cm(ridge_probe(x[~test], train_y, x[test]), truth) for kind, x in feats.items()}

    rows.update({f"encoder {kind}": err for kind, err in errors(encoder).items()})
    random_seeds = list(range(cfg.random_seed, cfg.random_seed + cfg.random_inits)) if cfg.compare_random else []
    per_init = []
    for seed in random_seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            per_init.append(errors(PixioViT(**encoder.config).eval()))
    kinds = list(per_init[0]) if per_init else []
    for kind in kinds:
        rows[f"random {kind}"] = np.mean([init[kind] for init in per_init], axis=0)
    result = {
        "format": FORMAT,
        "encoder": cfg.encoder,
        "env": cfg.env,
        "difficulty": cfg.difficulty,
        "camera": cfg.camera,
        "image_size": size,
        "block": block,
        "blocks": len(encoder.blocks),
        "scenes": cfg.scenes,
        "held_out": int(n_test),
        "seeds": [cfg.seed, cfg.seed + cfg.scenes - 1],
        "targets": scenes.names,
        "rmse_cm": {k: float(v.mean()) for k, v in rows.items()},
        "rmse_cm_per_target": {k: dict(zip(scenes.names, map(float, v), strict=True)) for k, v in rows.items()},
        "random_seeds": random_seeds,
        "random_rmse_cm_per_init": {kind: [float(init[kind].mean()) for init in per_init] for kind in kinds},
        "seconds": time.perf_counter() - started,
    }
    if cfg.out is not None:
        write_json(cfg.out, result)
    return result


def format_table(result: dict) -> str:
    names = result["targets"]
    head = "| read-out | mean RMSE (cm) | " + " | ".join(names) + " |"
    lines = [head, "|---" * (len(names) + 2) + "|"]
    for label, per in result["rmse_cm_per_target"].items():
        cells = " | ".join(f"{per[n]:.2f}" for n in names)
        lines.append(f"| {label} | {result['rmse_cm'][label]:.2f} | {cells} |")
    return "\n".join(lines)


def run(cfg: ProbeConfig) -> int:
    result = probe(cfg)
    block_label = f"{result['block']}" + (" (the last)" if result["block"] == result["blocks"] - 1 else "")
    print(
        f"probe of {cfg.encoder} on {cfg.env}: {result['scenes']} scenes, {result['held_out']} held out, "
        f"{result['image_size']} px, ridge on block {block_label} patch tokens / global embedding"
    )
    print(format_table(result))
    if math.isfinite(result["rmse_cm"].get("random patches", math.nan)):
        own = result["rmse_cm"]["encoder patches"]
        ratio = result["rmse_cm"]["random patches"] / own
        inits = result["random_rmse_cm_per_init"]["patches"]
        spread = f" (single inits {min(inits) / own:.2f}-{max(inits) / own:.2f}x)" if len(inits) > 1 else ""
        print(
            f"patch tokens: random-initialised (mean of {len(inits)} init{'s' * (len(inits) > 1)}) / this encoder "
            f"= {ratio:.2f}x the error{spread}"
        )
    if cfg.out:
        print(f"wrote {cfg.out}")
    return 0
