#!/usr/bin/env bash
# TensorBoard for a TPU job, served from worker 0 and forwarded to http://localhost:PORT here.
#
# Usage: launch/tpu_tensorboard.sh TPU_NAME ZONE LOGDIR [PORT]
#   LOGDIR: a job's WORKDIR or a folder of several (gs://BUCKET/runs); PORT default 6006.
# Environment: PROJECT (default: gcloud's configured project), VENV (default ~/softvq_venv).
# With gcloud credentials here, `tensorboard --logdir=gs://BUCKET/runs` works locally as well
# (pip install tensorboard tensorflow-cpu; gcloud auth application-default login).
set -euo pipefail
if [[ $# -lt 3 || $# -gt 4 ]]; then
  sed -n '2,8p' "$0" >&2
  exit 2
fi
TPU_NAME=$1 ZONE=$2 LOGDIR=$3 PORT=${4:-6006}
PROJECT=${PROJECT:-$(gcloud config get-value project 2>/dev/null)}
VENV=${VENV:-'~/softvq_venv'} # expanded on the worker
echo "TensorBoard for $LOGDIR: open http://localhost:$PORT (Ctrl-C stops it)"
exec gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" --worker=0 \
  --ssh-flag="-L $PORT:localhost:$PORT" \
  --command=". $VENV/bin/activate && tensorboard --logdir=$(printf '%q' "$LOGDIR") --port=$PORT"
