#!/usr/bin/env bash
# Wheels a GPU machine with only PyTorch, timm, transformers, numpy and pillow lacks for
# `render-frames`, `pretrain` and `probe` (scripts/gpu_encoder_v2.sh), for `capture` and
# `train-recon` (scripts/gpu_recon.sh) and for the benchmarks of
# scripts/gpu_scale.sh (lightly, the pre-training peer), at the versions of
# uv.lock, plus the project's own wheel, into DIR (default .whl, which git must ignore):
#
#   bash scripts/gpu_wheels.sh .whl            # here, with network to the package index
#   # there, before anything else:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   mkdir -p /tmp/site/rerun && cp shared/gpu/rerun_standin.py /tmp/site/rerun/__init__.py  # or the real rerun-sdk
#   export PYTHONPATH=/tmp/site PIXIO_ROBOT="python3 -m pixio_robot.cli"
#
# rerun-sdk (170 MB) does not travel: the stand-in turns its calls into no-ops there. MetaWorld
# tasks in TASKS would need metaworld's wheel too. 26 MB in all. Checked here: a fresh virtual
# environment with only torch, timm, transformers, numpy and pillow plus these wheels ran
# `SMOKE=1 scripts/gpu_encoder_v2.sh` end to end; `SMOKE=1 scripts/gpu_recon.sh` ran with every
# package the machine lacks made unimportable (eval-recon needs open3d: evaluate its head here).
set -euo pipefail
D=${1:-.whl}
mkdir -p "$D"
NEEDED="hydra-core omegaconf antlr4-python3-runtime pyyaml webdataset braceexpand mujoco absl-py etils glfw
pyopengl gymnasium cloudpickle farama-notifications einops lightly"
pins=$(uv export --frozen --no-hashes --format requirements-txt --no-emit-project 2>/dev/null | grep -E '^[A-Za-z0-9_.-]+==')
for name in $NEEDED; do
  pin=$(echo "$pins" | grep -i -E "^${name}==" | head -1 | cut -d' ' -f1 | cut -d';' -f1)
  [ -n "$pin" ] || { echo "gpu_wheels: $name is not in uv.lock" >&2; exit 1; }
  if [ "$name" = antlr4-python3-runtime ]; then  # published as a source archive only
    python3 -m pip wheel -q --no-deps -w "$D" "$pin"
  else
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform any -d "$D" "$pin"
  fi
done
uv build --wheel -q -o "$D"
du -sh "$D"
