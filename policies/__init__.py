"""Behaviour-cloning policies on a frozen Pixio (or timm) encoder, evaluated in simulation.

    from policies import train_policy, eval_policy
    run = train_policy(dataset="data/push", encoder="vits16", head="cortexbench", epochs=50, out="runs/push")
    result = eval_policy(policy=str(run.best), episodes=50, workers=2, out="results/push")
    print(result["success_rate"], result["ci95"], result["mean_length"])

Commands: `pixio-robot train-policy`, `eval-policy`, `compare`. The policy is a LeRobot
`PreTrainedPolicy` (type "pixio"): `PixioPolicy.from_pretrained(folder)` loads a checkpoint.
"""

from pixio_robot.lazy import lazy_exports

# Heavier parts (torch, LeRobot) load on first use, so `import policies` stays cheap.
_LAZY = {
    "TrainPolicyConfig": "commands",
    "EvalPolicyConfig": "commands",
    "TEST_SEED": "commands",
    "VALIDATION_SEED": "commands",
    "HEAD_CONFIGS": "heads",
    "head_config": "heads",
    "CortexBenchConfig": "configuration_cortexbench",
    "SpatialConfig": "configuration_spatial",
    "KeypointsConfig": "configuration_keypoints",
    "ChunkingConfig": "configuration_chunking",
    "PixioConfig": "configuration_pixio",
    "PixioPolicy": "modeling_pixio",
    "load_policy": "modeling_pixio",
    "save_policy": "modeling_pixio",
    "load_backbone": "backbones",
    "Demonstrations": "data",
    "CacheKey": "cache",
    "ensure_cache": "cache",
    "cache_features": "train",
    "train_policy": "train",
    "TrainResult": "train",
    "evaluate": "evaluation",
    "eval_policy": "evaluation",
    "EnvPolicy": "evaluation",
    "wilson_interval": "evaluation",
    "two_proportion_test": "evaluation",
}
__getattr__, __all__ = lazy_exports(__name__, _LAZY)
