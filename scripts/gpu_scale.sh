#!/usr/bin/env bash
# Issue 18's GPU figures in one go, as markdown files in RESULT_DIR (what the device tool brings
# back): pre-training images/s and MFU against lightly (ViT-L/16 and ViT-H/16 with the 512x32
# decoder, bf16, eager and compiled blocks), feature extraction against transformers (ViT-B/L/H,
# batch 64, 256 px), and the memory per GPU of the large presets, computed and measured on
# models cut to 4 + 4 blocks. Needs the carried wheels (scripts/gpu_wheels.sh: omegaconf for
# the presets, lightly for the peer). Each part is a few minutes at most; BATCH (64) and
# SIZES (vitl16 vith16) shorten it.
#
#   bash scripts/gpu_scale.sh $OUT
set -euo pipefail
R=${1:?usage: gpu_scale.sh RESULT_DIR}
mkdir -p "$R"
BATCH=${BATCH:-64}
SIZES=${SIZES:-vitl16 vith16}
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$R/gpu.txt" || true
for size in $SIZES; do
  echo "== pre-training step, $size"
  python3 benchmarks/pretrain.py --device cuda --encoder "$size" --batch "$BATCH" --decoders 32 \
    --dtypes bfloat16 --compile --no-peer-math --reps 5 | tee "$R/pretrain_$size.md"
done
echo "== memory per GPU of the large presets"
python3 benchmarks/checkpointing.py --preset vith16,vit5b16 --measure --depth 4 | tee "$R/memory.md"
for size in vitb16 $SIZES; do
  echo "== feature extraction, $size"
  python3 benchmarks/encoder.py --device cuda --size "$size" --batch "$BATCH" --compile-peer | tee "$R/encoder_$size.md"
done
