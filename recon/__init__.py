"""Multi-view metric reconstruction on frozen Pixio tokens (MapAnything-style head).

    from recon import Reconstructor
    rec = Reconstructor.from_checkpoint("runs/recon/model.safetensors")
    result = rec(["view0.png", "view1.png"])       # metric points and cameras in view 0's frame
    result.save_ply("scene.ply"); result.save_rrd("scene.rrd")

Commands: `pixio-robot train-recon`, `eval-recon`, `recon` (see the README).
"""

from pixio_robot.lazy import lazy_exports

# Public names load on first use, so `import recon` stays cheap for the CLI.
_LAZY = {
    "ReconConfig": "configuration_recon",
    "ReconModel": "modeling_recon",
    "ReconOutput": "modeling_recon",
    "ReconLoss": "losses",
    "Targets": "losses",
    "Reconstructor": "infer",
    "Reconstruction": "infer",
    "reconstruct": "infer",
    "reconstruct_to_files": "infer",
    "SceneData": "data",
    "load_scenes": "data",
    "read_scene": "data",
    "TokenCache": "tokens",
    "evaluate": "evaluate",
    "evaluate_checkpoint": "evaluate",
}
__getattr__, __all__ = lazy_exports(__name__, _LAZY)
