"""Entry point: `python -m softvq_jax.main --config=configs/tokenizer_b.py --workdir=runs/x`.

Flags, distributed initialisation, then dispatch to the trainer named by `config.trainer`.
"""

import json
import os
import pathlib

from absl import app, flags, logging
from ml_collections import config_flags

from softvq_jax.utils import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, summaries and images go.")
_DISTRIBUTED = flags.DEFINE_enum(
  "distributed",
  "auto",
  ["auto", "true", "false"],
  "Call jax.distributed.initialize(): 'auto' does so under SLURM with several tasks or when "
  "JAX_COORDINATOR_ADDRESS is set; use 'true' on multi-host TPU pods (launch/tpu_run.sh does).",
)
flags.mark_flags_as_required(["config", "workdir"])


def _needs_distributed_init() -> bool:
  if _DISTRIBUTED.value != "auto":
    return _DISTRIBUTED.value == "true"
  if os.environ.get("SLURM_NTASKS", "1") not in ("", "1"):
    return True
  return bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))


def main(argv):
  del argv
  config = _CONFIG.value
  # Imports after flag parsing keep `--help` fast.
  import jax

  from softvq_jax.config.validate import validate
  from softvq_jax.training import registry

  validate(config)  # before anything compiles
  cli.hide_accelerators_from_tf()
  if _needs_distributed_init():
    jax.distributed.initialize()
  logging.info(
    "jax %s; process %d/%d; %d local / %d global devices: %s",
    jax.__version__,
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    jax.devices()[0].device_kind,
  )
  workdir = pathlib.Path(_WORKDIR.value)
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(config.to_dict(), indent=2, default=str))
  registry.run(config, str(workdir))


if __name__ == "__main__":
  app.run(main)
