"""The `demo` subcommand's options (torch-free, so `pixio-robot demo --help` answers at once)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pixio_robot.cli import Command


@dataclass
class DemoConfig:
    out: str | None = field(
        default=None, metadata={"help": "folder for everything (default: the next free outputs/demo/run-N)"}
    )
    task: str = field(
        default="push",
        metadata={"help": "task to learn: an own task (push, pick_place, reach, ...) or metaworld/<task>"},
    )
    cameras: list[str] | None = field(
        default=None,
        metadata={"help": "cameras the policy reads (default [front]; pick_place [front,wrist]; MetaWorld [corner2])"},
    )
    demos: int = field(default=300, metadata={"help": "scripted demonstrations to record"})
    noise: float = field(
        default=0.3, metadata={"help": "expert action noise while recording (DART: the data shows recoveries)"}
    )
    mistakes: float | None = field(
        default=None,
        metadata={
            "help": "pick_place, stack: probability per episode of a recorded recovery from a descent beside "
            "the cube (collect mistakes=; default: pick_place 1, others 0)"
        },
    )
    policy_head: str = field(
        default="keypoints", metadata={"help": "policy head: keypoints, cortexbench, spatial, chunking"}
    )
    epochs: int | None = field(
        default=None, metadata={"help": "training epochs of the head (default 100; pick_place 80)"}
    )
    consecutive: int | None = field(
        default=None,
        metadata={"help": "training batches of runs of this many consecutive frames (default 1; pick_place 16)"},
    )
    episodes: int = field(default=50, metadata={"help": "evaluation episodes (held-out seeds)"})
    views: int = field(default=4, metadata={"help": "views of the reconstructed scene"})
    image_size: int = field(default=128, metadata={"help": "camera images (pixels, square)"})
    encoder: str = field(default="sim_vitn16_v2", metadata={"help": "encoder of the policy (bundled name or file)"})
    recon_head: str = field(
        default="recon_sim_vitn16_v2", metadata={"help": "reconstruction head (bundled name or file)"}
    )
    recon_flip: bool = field(
        default=True, metadata={"help": "test-time flip in the reconstruction (README: better poses and points)"}
    )
    depth_head: str = field(default="depth_sim_vitn16_v2", metadata={"help": "depth head (bundled name or file)"})
    workers: int = field(default=2, metadata={"help": "environment processes (collection, evaluation)"})
    seed: int = field(default=0, metadata={"help": "seed of training and of the reconstructed scene"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})


demo = Command(
    "demo",
    "the whole toolkit on the bundled weights: demos, policy, success rate, 3D reconstruction, depth",
    DemoConfig,
    "demo.pipeline:run",
)
