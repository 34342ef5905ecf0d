"""Throughput of the tokenizer train step: images/s, step time, TFLOP/s and MFU.

  python benchmarks/tokenizer_step.py --config=configs/tokenizer_b.py --steps=20 \
      --config.batch_size=64 [--peak_tflops=989]

Synthetic inputs (no input pipeline), the same sharded jitted step as training. FLOPs come from
XLA's cost analysis of the compiled step (per device); MFU uses `--peak_tflops` or the device's
bf16 peak from softvq_jax/training/flops.py. The timed calls run that compiled executable (no
second compilation).
"""

import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from softvq_jax import sharding
from softvq_jax.config.validate import validate
from softvq_jax.training import flops as flops_lib
from softvq_jax.training.tokenizer import TokenizerTask

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tokenizer_b.py:quick", "Config.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (after 2 warm-up steps).")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Accelerator peak TFLOP/s per device, for MFU.")


def main(argv):
  del argv
  config = _CONFIG.value
  # Until the perceptual/GAN/alignment terms are wired in, time the reconstruction objective.
  config.loss.perceptual_weight = config.loss.disc.weight = config.loss.align.weight = 0.0
  validate(config)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  sharding.check_batch_size(config.batch_size, mesh)
  task = TokenizerTask(config, mesh, total_steps=1000, warmup_steps=10)
  abstract = jax.eval_shape(task.init_state, jax.random.PRNGKey(0))
  shardings = sharding.param_shardings(abstract, mesh)
  state = jax.jit(task.init_state, out_shardings=shardings)(jax.random.PRNGKey(0))
  s = config.model.image_size
  rng = np.random.default_rng(0)
  local = config.batch_size // jax.process_count()
  batch = sharding.global_batch(
    {
      "image": rng.uniform(-1, 1, (local, s, s, 3)).astype(np.float32),
      "label": np.zeros((local,), np.int32),
    },
    mesh,
  )
  step = jax.jit(
    task.train_step,
    in_shardings=(shardings, sharding.batch_sharding(mesh)),
    out_shardings=(shardings, sharding.replicated(mesh)),
    donate_argnums=(0,),
  )
  compiled = step.lower(state, batch).compile()
  flops = flops_lib.compiled_flops(compiled) or 0.0
  for _ in range(2):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics["loss"])
  t0 = time.perf_counter()
  for _ in range(_STEPS.value):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics["loss"])
  dt = (time.perf_counter() - t0) / _STEPS.value
  ndev = jax.device_count()
  print(
    f"device: {jax.devices()[0].device_kind} x{ndev}; config variant={config.get('variant')} "
    f"res={s} tokens={config.model.num_latent_tokens} batch={config.batch_size} "
    f"dtype={config.model.dtype} remat={config.model.remat}"
  )
  print(f"step time {dt * 1e3:.1f} ms, {config.batch_size / dt:.1f} images/s")
  if flops:
    # cost_analysis counts the per-device program under SPMD.
    tflops = flops / dt / 1e12
    line = f"{tflops:.2f} TFLOP/s per device ({flops / 1e12:.3f} TFLOP per step per device)"
    peak = flops_lib.peak_tflops(jax.devices()[0].device_kind, _PEAK.value)
    if peak:
      line += f", MFU {100 * tflops / peak:.1f}%"
    print(line)


if __name__ == "__main__":
  app.run(main)
