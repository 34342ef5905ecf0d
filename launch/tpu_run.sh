#!/usr/bin/env bash
# Starts one training job on every worker of a TPU VM (installed with launch/tpu_setup.sh).
#
# Usage: launch/tpu_run.sh TPU_NAME ZONE CONFIG WORKDIR [main flags...]
#   e.g. launch/tpu_run.sh my-v4-32 us-central2-b configs/tokenizer_b.py gs://my-bucket/runs/b64 \
#          --config.data.data_dir=gs://my-bucket/tensorflow_datasets --config.data.reader=auto
# Environment: PROJECT (default: gcloud's configured project), VENV (default ~/softvq_venv),
# LOG_DIR (on the workers; default ~/softvq_logs), FOLLOW=0 to return without following
# worker 0's log, ALLOW_LOCAL_WORKDIR=1 for a folder every host shares (NFS, Filestore).
#
# Every worker runs `python -m softvq_jax.main --distributed=true` detached (nohup), so a dropped
# ssh connection does not stop training; each writes LOG_DIR/<run>.worker<N>.log. WORKDIR must be
# a gs:// path on a multi-host slice (every host reads and writes the same checkpoints; a local
# folder would give each host its own). Stop it with launch/tpu_stop.sh (SIGTERM: the step
# finishes and is saved). Rerunning the same command resumes from the last checkpoint, e.g. after
# a preemption (recreate the VM and rerun tpu_setup.sh first).
set -euo pipefail
if [[ $# -lt 4 ]]; then
  sed -n '2,16p' "$0" >&2
  exit 2
fi
TPU_NAME=$1 ZONE=$2 CONFIG=$3 WORKDIR=$4
shift 4
PROJECT=${PROJECT:-$(gcloud config get-value project 2>/dev/null)}
VENV=${VENV:-'~/softvq_venv'}      # expanded on the workers
LOG_DIR=${LOG_DIR:-'~/softvq_logs'} # expanded on the workers
GCLOUD=(gcloud compute tpus tpu-vm)

if [[ $WORKDIR != gs://* && ${ALLOW_LOCAL_WORKDIR:-0} != 1 ]]; then
  HOSTS=$("${GCLOUD[@]}" describe "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" \
    --format='value(networkEndpoints[].ipAddress)' | tr ';,' '\n\n' | grep -c . || true)
  if [[ ${HOSTS:-0} -gt 1 ]]; then
    echo "error: WORKDIR=$WORKDIR is not a gs:// path, but $TPU_NAME has $HOSTS hosts: each would" \
      "write its own local checkpoints. Use a bucket, e.g. gs://BUCKET/runs/$(basename "$WORKDIR")" \
      "(or ALLOW_LOCAL_WORKDIR=1 for a folder all hosts share)" >&2
    exit 2
  fi
fi

RUN=$(basename "$WORKDIR")
ARGS=$(printf '%q ' --distributed=true "--config=$CONFIG" "--workdir=$WORKDIR" "$@")
# Runs on each worker; \$ marks what the worker expands. The worker number comes from the TPU
# metadata server (hostname as a fallback).
"${GCLOUD[@]}" ssh "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" --worker=all --command="
set -euo pipefail
W=\$(curl -sf -H Metadata-Flavor:Google \
  http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number \
  || hostname)
mkdir -p $LOG_DIR
LOG=$LOG_DIR/$RUN.worker\$W.log
cd ~/softvq_jax && . $VENV/bin/activate
echo \"== \$(date -u +%FT%TZ) python -m softvq_jax.main $ARGS\" >> \"\$LOG\"
nohup python -m softvq_jax.main $ARGS >> \"\$LOG\" 2>&1 < /dev/null &
echo \$! > $LOG_DIR/$RUN.worker\$W.pid
echo \"\$(hostname): worker \$W started (pid \$!), log \$LOG\"
"

cat <<EOF
Started on every worker of $TPU_NAME. Logs: $LOG_DIR/$RUN.worker<N>.log on each worker.
  follow:      gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=0 --command='tail -f $LOG_DIR/$RUN.worker0.log'
  TensorBoard: launch/tpu_tensorboard.sh $TPU_NAME $ZONE $WORKDIR
  stop:        launch/tpu_stop.sh $TPU_NAME $ZONE $RUN
  resume:      rerun this command (it continues from the last checkpoint in $WORKDIR)
EOF
if [[ ${FOLLOW:-1} != 0 ]]; then
  echo "following worker 0's log (Ctrl-C stops following, not the job)"
  exec "${GCLOUD[@]}" ssh "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" --worker=0 \
    --command="tail -n +1 -F $LOG_DIR/$RUN.worker0.log"
fi
