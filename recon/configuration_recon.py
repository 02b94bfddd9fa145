"""Configuration of the reconstruction head (architecture and loss), LeRobot style.

The same names are the keys of the Hydra presets under `configs/recon/` (`recon=small`) and
of `recon.*` overrides on the command line (`recon.dim=256`). Kept free of torch so the CLI can
read it without importing the model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from pixio_robot.errors import PixioError

# Options added after heads and runs were saved, with the value those had: heads saved before
# `pose_frame` existed predicted poses in view 0's frame, those saved before `dense_head` had
# the per-token MLP (the DPT width is then unused), those before `scale_grad` trained m only,
# those before `assumed_fovy` hid any view's intrinsics.
# Loading a head and resuming a run both read a missing option as this.
SAVED_BEFORE = {
    "pose_frame": "reference",
    "dense_head": "mlp",
    "dpt_features": 64,
    "scale_grad": "head",
    "assumed_fovy": None,
}


@dataclass
class ReconConfig:
    """A MapAnything-style head on frozen Pixio patch tokens (docs/DESIGN.md section 5)."""

    # Multi-view transformer. Blocks alternate: even ones attend across all views (plus the scale
    # token), odd ones within each view, so `depth` 4 is two global and two frame blocks.
    dim: int = field(default=128, metadata={"help": "width of the multi-view transformer"})
    depth: int = field(default=4, metadata={"help": "transformer blocks, alternating global/frame"})
    num_heads: int = field(default=4, metadata={"help": "attention heads"})
    mlp_ratio: float = field(default=4.0, metadata={"help": "MLP width / dim in each block"})
    head_hidden: int = field(default=256, metadata={"help": "hidden width of the dense, pose and scale heads"})
    # Where each view's pose is predicted. "reference": directly in view 0's frame (view 0 fixed
    # to the identity), as MapAnything states its output. "shared": in a frame the views agree
    # on through the global blocks, then expressed relative to view 0 (inv(P_0) P_i). Each view
    # can then read its pose from its own image (where the robot and table are) and the head
    # need not learn to subtract view 0's pose inside an MLP (README, reconstruction).
    pose_frame: str = field(default="shared", metadata={"help": "shared or reference (see the README)"})
    # How the per-pixel outputs (rays, depth, confidence, mask) are made from the tokens. "mlp":
    # an MLP per token, pixel-shuffled (DUSt3R's linear head). "dpt": MapAnything's dense head,
    # the DPT decoder (recon/dpt.py) over 4 maps: the projected encoder tokens and the outputs of
    # blocks depth*k//3 - 1 (k = 1, 2, 3); convolutions across patches give within-patch detail.
    dense_head: str = field(default="mlp", metadata={"help": "mlp (per token) or dpt (multi-scale decoder)"})
    dpt_features: int = field(default=64, metadata={"help": "DPT fusion width; reassemble widths f/2, f, 2f, 2f"})
    # Known intrinsics enter as the pixel rays they imply, patchified and added to the tokens.
    # Training drops them with this probability so one model serves both cases.
    intrinsics_dropout: float = field(default=0.5, metadata={"help": "chance of hiding known intrinsics per view"})
    # Without intrinsics an image of an unfamiliar camera is ambiguous (a wider lens or a closer
    # scene), and a head that must guess any camera's rays from pixels loses the metric scale of
    # the one it was mostly trained on (README, "Other cameras"). With this set, training hides
    # the intrinsics only of views of this vertical field of view: given none, the head assumes
    # that camera; other cameras are told by their intrinsics.
    assumed_fovy: float | None = field(
        default=None, metadata={"help": "fovy (deg) assumed when K is not given; null: infer any camera"}
    )

    # Loss (docs/DESIGN.md section 5): weights of the factored terms, robust loss shape, confidence.
    w_points: float = field(default=1.0, metadata={"help": "confidence-weighted world-point loss"})
    w_cam_points: float = field(default=1.0, metadata={"help": "camera-frame point loss"})
    w_rays: float = field(default=1.0, metadata={"help": "ray-direction loss"})
    w_depth: float = field(default=1.0, metadata={"help": "depth-along-ray loss"})
    w_translation: float = field(default=1.0, metadata={"help": "camera translation loss"})
    w_rotation: float = field(default=1.0, metadata={"help": "quaternion loss (min over +-q)"})
    w_scale: float = field(default=1.0, metadata={"help": "metric scale loss (metric data only)"})
    w_mask: float = field(default=0.1, metadata={"help": "valid-pixel mask (BCE)"})
    # What the metric-scale loss trains. "head": only m, the size of the up-to-scale prediction
    # detached (MapAnything's form). "both": that size too. The geometric terms are all
    # scale-invariant, so nothing else trains the size of the up-to-scale points, yet a trained
    # head's metres turned out to live there (its m barely varies; README, "Where the metres come from").
    scale_grad: str = field(default="head", metadata={"help": "head (m only) or both (m and the geometry's size)"})
    conf_alpha: float = field(default=0.2, metadata={"help": "alpha in conf * err - alpha * log(conf)"})
    robust_alpha: float = field(default=0.5, metadata={"help": "shape of Barron's robust loss"})
    robust_c: float = field(default=0.05, metadata={"help": "scale of Barron's robust loss"})

    def check(self) -> ReconConfig:
        if self.dim < 8 or self.dim % self.num_heads:
            raise PixioError(
                f"recon.dim={self.dim} must be at least 8 and divisible by recon.num_heads={self.num_heads}"
            )
        if self.depth < 1:
            raise PixioError(f"recon.depth={self.depth}: use at least 1 block (even blocks are global)")
        if self.dense_head not in ("mlp", "dpt"):
            raise PixioError(f"recon.dense_head={self.dense_head!r}: choose mlp or dpt")
        if self.dpt_features < 4 or self.dpt_features % 2:
            raise PixioError(f"recon.dpt_features={self.dpt_features}: give an even width of at least 4")
        if self.scale_grad not in ("head", "both"):
            raise PixioError(f"recon.scale_grad={self.scale_grad!r}: choose head or both")
        if self.pose_frame not in ("reference", "shared"):
            raise PixioError(f"recon.pose_frame={self.pose_frame!r}: choose reference or shared")
        if not 0.0 <= self.intrinsics_dropout <= 1.0:
            raise PixioError(f"recon.intrinsics_dropout={self.intrinsics_dropout}: give a probability in [0, 1]")
        if self.assumed_fovy is not None and not 0 < self.assumed_fovy < 180:
            raise PixioError(f"recon.assumed_fovy={self.assumed_fovy}: give a field of view in degrees (0-180) or null")
        if self.robust_alpha <= 0 or self.robust_alpha == 2 or self.robust_c <= 0:
            raise PixioError("recon.robust_alpha must be > 0 and != 2, recon.robust_c > 0")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ReconConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise PixioError(
                f"unknown recon config keys {sorted(unknown)}: was the checkpoint written by a newer version?"
            )
        return cls(**{**SAVED_BEFORE, **values}).check()

    @property
    def dpt_blocks(self) -> list[int]:
        """The blocks whose outputs the DPT dense head reads after the projected input tokens."""
        return [max(self.depth * k // 3 - 1, 0) for k in (1, 2, 3)]
