"""Throughput of the LPIPS-VGG16 loss (forward + gradient w.r.t. the reconstruction).

  python benchmarks/lpips_step.py --batch=32 --size=256 [--dtype=bfloat16] [--steps=10]

Random weights (speed does not depend on them) and synthetic images on the default device.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from softvq_jax.objectives.perceptual import lpips_loss
from softvq_jax.weights.lpips import random_lpips_params

_BATCH = flags.DEFINE_integer("batch", 32, "Images per step.")
_SIZE = flags.DEFINE_integer("size", 256, "Image side.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "VGG conv dtype.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (after 2 warm-up steps).")


def main(argv):
  del argv
  dtype = jnp.dtype(_DTYPE.value)
  params = jax.device_put(random_lpips_params(0))
  rng = np.random.default_rng(0)
  shape = (_BATCH.value, _SIZE.value, _SIZE.value, 3)
  x = jnp.asarray(rng.uniform(-1, 1, shape), jnp.float32)
  y = jnp.asarray(rng.uniform(-1, 1, shape), jnp.float32)
  step = jax.jit(jax.value_and_grad(lambda p, a, b: lpips_loss(p, a, b, dtype), argnums=2))
  for _ in range(2):
    jax.block_until_ready(step(params, x, y))
  t0 = time.perf_counter()
  for _ in range(_STEPS.value):
    out = step(params, x, y)
  jax.block_until_ready(out)
  dt = (time.perf_counter() - t0) / _STEPS.value
  print(
    f"LPIPS fwd+grad {shape} {_DTYPE.value} on {jax.devices()[0].device_kind}: "
    f"{dt * 1e3:.1f} ms/step, {_BATCH.value / dt:.1f} images/s"
  )


if __name__ == "__main__":
  app.run(main)
