"""LeRobot's own trainer (`lerobot-train`) driving a pixio policy.

    uv run --extra lerobot-train python -m policies.lerobot_train \\
        --policy.path=runs/push/checkpoints/last --policy.push_to_hub=false \\
        --dataset.repo_id=local/push --dataset.root=data/push \\
        --steps=2000 --batch_size=64 --output_dir=runs/push_lerobot

Every argument is LeRobot's (`lerobot-train --help`). LeRobot resolves a policy type through
its config registry and imports third-party plugins only from installed distributions named
`lerobot_policy_*`, which this toolkit is not: this module registers the `pixio` type and then
hands the command line to LeRobot unchanged.

Start from a policy saved by `train-policy` (`--policy.path`): the frozen encoder's weights are
part of the policy's weights, and its config names the camera, head and environment. LeRobot's
loop re-encodes the frames of every batch with the frozen encoder (it has no feature cache), so
it is the slower way to train; its checkpoints (`<output_dir>/checkpoints/<step>/pretrained_model`)
load and evaluate like ours: `pixio-robot eval-policy policy=<that folder>`.
"""

from __future__ import annotations

import sys

from . import configuration_pixio  # noqa: F401  (registers the "pixio" policy type with LeRobot)


def main() -> int:
    from lerobot.scripts.lerobot_train import main as lerobot_train

    lerobot_train()
    return 0


if __name__ == "__main__":
    sys.exit(main())
