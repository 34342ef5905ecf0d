#!/usr/bin/env bash
# Creates a Cloud TPU VM (a single host or a multi-host pod slice).
#
# Usage: launch/tpu_create.sh TPU_NAME ZONE ACCELERATOR_TYPE [extra gcloud flags...]
#   e.g. launch/tpu_create.sh my-v4-32 us-central2-b v4-32
#        launch/tpu_create.sh my-v5e-16 us-west4-a v5litepod-16 --spot
# Environment: PROJECT (default: gcloud's configured project), VERSION (the TPU software
# version; default: the base image of the accelerator's generation, see below).
# Then: launch/tpu_setup.sh TPU_NAME ZONE, and launch/tpu_run.sh (see launch/README.md).
set -euo pipefail
if [[ $# -lt 3 ]]; then
  sed -n '2,9p' "$0" >&2
  exit 2
fi
TPU_NAME=$1 ZONE=$2 ACCEL=$3
shift 3
PROJECT=${PROJECT:-$(gcloud config get-value project 2>/dev/null)}
if [[ -z ${VERSION:-} ]]; then
  case $ACCEL in
    v5litepod-* | v5e-*) VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    *) VERSION=tpu-ubuntu2204-base ;; # v2, v3, v4
  esac
fi
echo "creating $TPU_NAME ($ACCEL, $VERSION) in $ZONE, project $PROJECT"
gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" \
  --accelerator-type="$ACCEL" --version="$VERSION" "$@"
