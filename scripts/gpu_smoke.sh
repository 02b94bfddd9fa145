#!/usr/bin/env bash
# A short run of every job with device=cuda: run it whenever a GPU is at hand and put what it
# showed in the README ("GPU smoke check"). Each step is a few seconds to a minute; a failure
# stops the script and names the step. Steps whose packages are missing on the machine
# (mujoco/LeRobot for collect, train-policy and eval-policy) are skipped with a line saying so.
#
#   bash scripts/gpu_smoke.sh [WORK_DIR]        (default: a fresh temporary folder)
set -euo pipefail
PR=${PIXIO_ROBOT:-pixio-robot}
if command -v uv >/dev/null 2>&1 && [ -f pyproject.toml ] && [ -z "${PIXIO_ROBOT:-}" ]; then PR="uv run pixio-robot"; fi
W=${1:-$(mktemp -d)}
mkdir -p "$W"
step() { echo "== $1"; }
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"

step "images for the encoder jobs"
python3 - "$W/imgs" <<'PY'
import sys, pathlib, numpy as np
from PIL import Image
d = pathlib.Path(sys.argv[1]); d.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
for i in range(64):
    Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(d / f"{i:03d}.png")
PY

step "features (bundled encoder, cuda)"
$PR features "$W/imgs" checkpoint=sim_vitn16_v2 device=cuda out="$W/feats.safetensors"

step "pretrain (vitn16_128 preset, cuda, bf16, 20 steps, then resumed to 30)"
$PR pretrain pretrain=vitn16_128 "data.sources=[$W/imgs]" schedule.steps=20 schedule.warmup_steps=2 \
    batch_size=32 run.device=cuda run.dir="$W/pretrain" run.checkpoint_every=10 data.num_workers=2
$PR pretrain pretrain=vitn16_128 "data.sources=[$W/imgs]" schedule.steps=30 schedule.warmup_steps=2 \
    batch_size=32 run.device=cuda run.dir="$W/pretrain" run.checkpoint_every=10 data.num_workers=2 run.resume=true

step "pretrain with activation checkpointing (cuda)"
$PR pretrain pretrain=vitn16_128 "data.sources=[$W/imgs]" schedule.steps=5 schedule.warmup_steps=1 \
    batch_size=32 run.device=cuda run.dir="$W/pretrain_ckpt" model.grad_checkpointing=true data.num_workers=2

if python3 -c "import mujoco, lerobot" 2>/dev/null; then
  step "collect, train-policy (chunking head) and eval-policy on cuda"
  $PR collect env=push episodes=4 image_size=64 out="$W/push" progress=false
  $PR train-policy dataset="$W/push" encoder=sim_vitn16_v2 head=chunking head.chunk_size=4 epochs=2 \
      device=cuda out="$W/policy" progress=false
  $PR eval-policy policy="$W/policy/checkpoints/best" episodes=2 workers=1 device=cuda out="$W/eval" progress=false
  step "capture, train-recon, recon on cuda"
  $PR capture env=stack scenes=4 views=2 image_size=64 out="$W/scenes" progress=false
  $PR train-recon "data=[$W/scenes]" encoder=sim_vitn16_v2 steps=5 device=cuda out="$W/recon" progress=false
  $PR recon "$W/scenes/scene_000000/rgb" checkpoint="$W/recon/model.safetensors" device=cuda out="$W/scene.ply"
  step "train-depth (DPT head) and eval-depth on cuda"
  $PR train-depth "data=[$W/scenes]" encoder=sim_vitn16_v2 image_size=64 steps=5 device=cuda out="$W/depth" progress=false
  $PR eval-depth checkpoint="$W/depth/model.safetensors" "data=[$W/scenes]" device=cuda progress=false
else
  echo "== skipped: collect, train-policy, eval-policy, capture, train-recon, recon, train-depth, eval-depth (mujoco/lerobot not installed here)"
fi
echo "GPU smoke check passed ($W)"
