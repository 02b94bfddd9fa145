"""`python -m pretrain ARGS` = `pixio-robot pretrain ARGS`; `python -m pretrain COMMAND ARGS`
runs the package's other commands (distill, curate, pretrain-view, pretrain-export).

This is the form torchrun launches: `torchrun --nproc_per_node=8 -m pretrain pretrain=vith16 ...`.
"""

import sys

from pixio_robot.cli import main

COMMANDS = ("pretrain", "distill", "curate", "pretrain-view", "pretrain-export")

if __name__ == "__main__":
    argv = sys.argv[1:]
    sys.exit(main(argv if argv and argv[0] in COMMANDS else ["pretrain", *argv]))
