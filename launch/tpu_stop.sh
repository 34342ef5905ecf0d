#!/usr/bin/env bash
# Stops a job started by launch/tpu_run.sh on every worker: SIGTERM to the recorded process, so
# the current step finishes, a checkpoint is saved and committed, and the job exits (rerun
# tpu_run.sh to resume).
#
# Usage: launch/tpu_stop.sh TPU_NAME ZONE RUN
#   RUN: the last component of the job's WORKDIR (the log and pid files are LOG_DIR/RUN.worker<N>.*)
# Environment: PROJECT (default: gcloud's configured project), LOG_DIR (default ~/softvq_logs).
set -euo pipefail
if [[ $# -ne 3 ]]; then
  sed -n '2,8p' "$0" >&2
  exit 2
fi
TPU_NAME=$1 ZONE=$2 RUN=$3
PROJECT=${PROJECT:-$(gcloud config get-value project 2>/dev/null)}
LOG_DIR=${LOG_DIR:-'~/softvq_logs'} # expanded on the workers
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" --worker=all \
  --command="
for f in $LOG_DIR/$RUN.worker*.pid; do
  [[ -f \$f ]] || { echo \"\$(hostname): no \$f\"; continue; }
  pid=\$(cat \"\$f\")
  if kill -TERM \"\$pid\" 2>/dev/null; then
    echo \"\$(hostname): sent SIGTERM to \$pid\"
  else
    echo \"\$(hostname): \$pid is not running\"
  fi
done
"
