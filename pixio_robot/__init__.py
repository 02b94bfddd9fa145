"""pixio-robot: robot learning and 3D perception on the Pixio encoder.

import pixio_robot
encoder = pixio_robot.load_encoder("pixio_vitb16.pth")      # or "vits16" for random weights
x = pixio_robot.Preprocess(256)(images)                     # uint8 HWC, PIL or float tensors
tokens = encoder(x)                                         # (B, 8 + h*w, D), final-normed
embedding = encoder.global_embedding(x)                     # (B, D), mean of class tokens
"""

import os

from .lazy import lazy_exports

# Headless rendering: MuJoCo reads MUJOCO_GL when it is first imported, so this must come
# before anything imports mujoco. Users who set it themselves keep their choice.
os.environ.setdefault("MUJOCO_GL", "egl")

# Public names, imported on first use: `import pixio_robot` stays cheap for the CLI and for
# worker processes that only need a submodule.
_EXPORTS = {
    "load_encoder": "checkpoints",
    "save_encoder": "checkpoints",
    "PIXIO_SIZES": "encoder",
    "BlockTokens": "encoder",
    "PixioViT": "encoder",
    "create_encoder": "encoder",
    "PixioError": "errors",
    "Preprocess": "preprocess",
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
