#!/usr/bin/env bash
# Installs softvq_jax on every worker of a TPU VM (pod slice).
# Usage: launch/tpu_setup.sh TPU_NAME ZONE [PROJECT]
# The repository is copied from this machine (scp) so no worker needs git credentials.
set -euo pipefail
TPU_NAME=${1:?TPU name}; ZONE=${2:?zone}; PROJECT=${3:-$(gcloud config get-value project)}
REPO_DIR=$(cd "$(dirname "$0")/.." && pwd)
tar -C "$REPO_DIR" --exclude=.git --exclude=runs --exclude=.venv -czf /tmp/softvq_jax.tgz .
gcloud compute tpus tpu-vm scp /tmp/softvq_jax.tgz "$TPU_NAME":~/softvq_jax.tgz \
  --zone="$ZONE" --project="$PROJECT" --worker=all
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" --worker=all \
  --command='set -e; mkdir -p ~/softvq_jax && tar -C ~/softvq_jax -xzf ~/softvq_jax.tgz &&
    cd ~/softvq_jax && python3 -m pip install -q "jax[tpu]==0.10.2" && python3 -m pip install -q -e .'
