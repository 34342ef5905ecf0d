#!/usr/bin/env bash
# Runs one training job on all workers of a TPU pod slice (jax.distributed is initialised by main).
# Usage: launch/tpu_run.sh TPU_NAME ZONE CONFIG WORKDIR [extra flags...]
#   e.g. launch/tpu_run.sh my-v4-64 us-central2-b configs/tokenizer_b.py gs://bucket/runs/softvq_b64 \
#          --config.data.data_dir=gs://bucket/tfds
# WORKDIR should be a GCS path (or a shared filesystem) so that every host sees the checkpoints;
# re-running the same command resumes from the last checkpoint.
set -euo pipefail
TPU_NAME=${1:?TPU name}; ZONE=${2:?zone}; CONFIG=${3:?config}; WORKDIR=${4:?workdir}; shift 4
EXTRA="$*"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all \
  --command="cd ~/softvq_jax && python3 -m softvq_jax.main --distributed=true \
    --config=$CONFIG --workdir=$WORKDIR $EXTRA 2>&1 | tee -a ~/train.log"
