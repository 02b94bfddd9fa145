#!/usr/bin/env bash
# Encoder v2 in one go on a GPU machine (issue 13): render the pre-training frames there (MuJoCo
# renders through EGL), pre-train, probe, and copy what a session needs into RESULT_DIR.
# A GPU session has minutes, so the script was run end to end on the CPU first:
#
#   SMOKE=1 bash scripts/gpu_encoder_v2.sh /tmp/v2work /tmp/v2result       (~2 min on 2 cores)
#
# On the device machine, after installing the carried wheels (scripts/gpu_wheels.sh lists them):
#
#   bash scripts/gpu_encoder_v2.sh /tmp/v2 $OUT
#
# Knobs (environment): PRESET (configs/pretrain/, default vitn16_128), STEPS (8000), BATCH (256),
# EPISODES per task and level (100), TASKS (the own five: at the CPU budget frames of the own
# tasks localised better than the mix with MetaWorld, README "Pixio against MAE"), WORKERS
# (loader and render processes, 14), SCENES for the probes (1000), EXTRA (more pretrain options).
# At the measured 8000+ images/s of vitn16_128 on one H200, 8000 x 256 images take ~4-5 min.
# RESULT_DIR gets at most 8 files, none in sub-folders (what the device tool brings back).
set -euo pipefail
W=${1:?usage: gpu_encoder_v2.sh WORK_DIR [RESULT_DIR]}
R=${2:-$W/result}
PR=${PIXIO_ROBOT:-pixio-robot}
if command -v uv >/dev/null 2>&1 && [ -f pyproject.toml ] && [ -z "${PIXIO_ROBOT:-}" ]; then PR="uv run pixio-robot"; fi
PRESET=${PRESET:-vitn16_128}
STEPS=${STEPS:-8000}
BATCH=${BATCH:-256}
EPISODES=${EPISODES:-100}
TASKS=${TASKS:-[reach,push,pick_place,stack,drawer_open]}
WORKERS=${WORKERS:-14}
SCENES=${SCENES:-1000}
EXTRA=${EXTRA:-}
if [ "${SMOKE:-0}" = 1 ]; then  # the same steps, sized for a CPU check
  STEPS=6 BATCH=8 EPISODES=1 TASKS=[reach,push] WORKERS=1 SCENES=40 EXTRA="schedule.warmup_steps=1 $EXTRA"
fi
mkdir -p "$W" "$R"
step() { echo "== $(date +%T) $1"; }

step "render-frames: $TASKS, $EPISODES episodes per task and level"
[ -f "$W/frames/frames.json" ] || $PR render-frames out="$W/frames" "tasks=$TASKS" episodes="$EPISODES" \
    workers="$WORKERS" progress=false

step "pretrain $PRESET: $STEPS steps of $BATCH images (resumes if a checkpoint is there)"
resume=false
[ -d "$W/pretrain/checkpoints" ] && resume=true
# shellcheck disable=SC2086  # EXTRA is a list of options
$PR pretrain pretrain="$PRESET" "data.sources=[$W/frames]" batch_size="$BATCH" schedule.steps="$STEPS" \
    data.num_workers="$WORKERS" run.dir="$W/pretrain" run.resume=$resume run.checkpoint_every=1000 \
    run.progress=false $EXTRA

step "probes (the encoder and the same architecture random-initialised)"
for env in push reach; do
  $PR probe encoder="$W/pretrain/encoder.safetensors" env=$env scenes="$SCENES" out="$R/probe_$env.json" progress=false
done

step "results into $R"
cp "$W/pretrain/encoder.safetensors" "$R/encoder.safetensors"
cp "$W/pretrain/metrics.csv" "$R/metrics.csv"
cp "$W/pretrain/config.json" "$R/pretrain_config.json"
cp "$W/frames/frames.json" "$R/frames.json"
python3 "$(dirname "$0")/run_rate.py" "$R/metrics.csv" images
ls -la "$R"
