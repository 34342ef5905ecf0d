"""Entry point: `python -m softvq_jax.main --config=configs/tokenizer_b.py --workdir=runs/x`.

Flags, distributed initialisation, then dispatch to the trainer named by `config.trainer`.
"""

import os
import sys

from absl import flags, logging
from ml_collections import config_flags

from softvq_jax.utils import cli, logs
from softvq_jax.utils.errors import UserError

logs.quiet_env()

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, summaries and images go.")
_DISTRIBUTED = flags.DEFINE_enum(
  "distributed",
  "auto",
  ["auto", "true", "false"],
  "Call jax.distributed.initialize(): 'auto' does so under SLURM with several tasks or when "
  "JAX_COORDINATOR_ADDRESS is set; use 'true' on multi-host TPU pods (launch/tpu_run.sh does).",
)
_PRINT_CONFIG = flags.DEFINE_boolean(
  "print_config",
  False,
  "Print the resolved config (every key = value with its help; '*' marks values that differ "
  "from the recipe) and exit, without --workdir and before anything is built.",
)


def _distributed_init() -> None:
  """jax.distributed.initialize(), from the cluster's environment (TPU, SLURM) or, for a plain
  launcher, JAX_COORDINATOR_ADDRESS with JAX_NUM_PROCESSES and JAX_PROCESS_ID."""
  import jax

  kw = {}
  if os.environ.get("JAX_NUM_PROCESSES"):
    kw = dict(
      num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
      process_id=int(os.environ.get("JAX_PROCESS_ID", "0")),
    )
  if os.environ.get("JAX_PLATFORMS", "") == "cpu":  # checked without starting a backend
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU-only runs and tests
  jax.distributed.initialize(**kw)


def _needs_distributed_init() -> bool:
  if _DISTRIBUTED.value != "auto":
    return _DISTRIBUTED.value == "true"
  if os.environ.get("SLURM_NTASKS", "1") not in ("", "1"):
    return True
  return bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))


def main(argv):
  del argv  # cli.run has refused any positional argument
  # Checked here rather than with mark_flags_as_required, which would make these flags required
  # for every other program run in the same process (notebooks, tests).
  needed = (_CONFIG,) if _PRINT_CONFIG.value else (_CONFIG, _WORKDIR)
  missing = [f"--{f.name}" for f in needed if f.value is None]
  if missing:
    raise UserError(
      f"missing required flags {', '.join(missing)} (e.g. "
      "--config=configs/tokenizer_b.py:quick --workdir=runs/quick)"
    )
  config = _CONFIG.value
  if _PRINT_CONFIG.value:
    from softvq_jax.config import keys

    spec = flags.FLAGS["config"].config_filename
    print(keys.describe(config, defaults=keys.recipe_defaults(spec), title=spec))
    return 0
  # Imports after flag parsing keep `--help` fast.
  import jax

  from softvq_jax.config.validate import validate
  from softvq_jax.training import registry

  validate(config)  # before anything compiles
  cli.hide_accelerators_from_tf()
  if _needs_distributed_init():
    _distributed_init()
  logging.info(
    "jax %s; process %d/%d; %d local / %d global devices: %s",
    jax.__version__,
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    jax.devices()[0].device_kind,
  )
  from softvq_jax.training.signals import TrainingStopped

  try:
    registry.run(config, _WORKDIR.value)  # the loop writes config.json once the run is accepted
  except TrainingStopped as stopped:
    logging.warning("%s", stopped)
    sys.exit(stopped.exit_code)


if __name__ == "__main__":
  cli.run(main)
