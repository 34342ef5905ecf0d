#!/usr/bin/env bash
# Installs softvq_jax on every worker of a TPU VM (single host or pod slice) and checks it.
#
# Usage: launch/tpu_setup.sh TPU_NAME ZONE
# Environment: PROJECT (default: gcloud's configured project), VENV (on the workers; default
# ~/softvq_venv).
#
# The repository is copied from this checkout (a tarball, scp'd to every worker), so no worker
# needs git or credentials; uncommitted changes go too. Each worker gets a virtual environment
# with the pinned requirements (requirements.txt) and jax[tpu] at the same jax version, then the
# repo installed editable. Finally every worker imports softvq_jax and prints its devices (all
# workers at once: a pod slice's TPU runtime needs every host to start). Rerun after changing the
# code; the venv is reused.
set -euo pipefail
if [[ $# -ne 2 ]]; then
  sed -n '2,13p' "$0" >&2
  exit 2
fi
TPU_NAME=$1 ZONE=$2
PROJECT=${PROJECT:-$(gcloud config get-value project 2>/dev/null)}
VENV=${VENV:-'~/softvq_venv'} # expanded on the workers
REPO_DIR=$(cd "$(dirname "$0")/.." && pwd)
JAX_VERSION=$(sed -n 's/^jax==\([0-9][0-9.]*\).*/\1/p' "$REPO_DIR/requirements.txt")
if [[ -z $JAX_VERSION ]]; then
  echo "error: no 'jax==X.Y.Z' pin in $REPO_DIR/requirements.txt" >&2
  exit 2
fi
GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE" --project="$PROJECT" --worker=all)

TARBALL=$(mktemp "${TMPDIR:-/tmp}/softvq_jax.XXXXXX.tgz")
trap 'rm -f "$TARBALL"' EXIT
tar -C "$REPO_DIR" --exclude=.git --exclude=.venv --exclude=runs --exclude='__pycache__' \
  --exclude='*.egg-info' --exclude=.pytest_cache --exclude=.hypothesis -czf "$TARBALL" .
echo "copying $(du -h "$TARBALL" | cut -f1) of code to every worker of $TPU_NAME"
"${GCLOUD[@]}" scp "$TARBALL" "$TPU_NAME":softvq_jax.tgz "${WHERE[@]}"

# Runs on each worker. \$ marks what the worker expands.
"${GCLOUD[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --command="
set -euo pipefail
rm -rf ~/softvq_jax && mkdir -p ~/softvq_jax && tar -C ~/softvq_jax -xzf ~/softvq_jax.tgz
if [[ ! -x $VENV/bin/python ]]; then
  python3 -m venv $VENV 2>/dev/null || {
    sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv && python3 -m venv $VENV
  }
fi
. $VENV/bin/activate
cd ~/softvq_jax
python -m pip install -q --upgrade pip
python -m pip install -q 'jax[tpu]==$JAX_VERSION' -r requirements.txt \
  -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
python -m pip install -q --no-deps -e .
echo \"\$(hostname): installed jax==$JAX_VERSION and softvq_jax\"
"

echo "checking the install on every worker"
"${GCLOUD[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --command="
. $VENV/bin/activate && cd ~/softvq_jax && python -c '
import socket, jax, softvq_jax
d = jax.devices()
assert d[0].platform == \"tpu\", f\"no TPU: {d}\"
print(f\"{socket.gethostname()}: process {jax.process_index()}/{jax.process_count()}, \"
      f\"{jax.local_device_count()} local / {jax.device_count()} global {d[0].device_kind}\")
'"
echo "setup done; next: launch/tpu_run.sh $TPU_NAME $ZONE CONFIG gs://BUCKET/runs/NAME [flags]"
