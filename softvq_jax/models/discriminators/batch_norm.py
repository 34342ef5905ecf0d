"""BatchNorm with torch (Sync)BatchNorm semantics, channels-last, computed in float32.

Statistics are taken over every axis but the last. Under `jax.jit` with the batch sharded over
devices (NamedSharding on the batch axis) a plain mean over the batch axis is a GLOBAL mean (XLA
inserts the cross-device reduction), so this is SyncBatchNorm over the global batch, as the
reference DINO discriminator heads ('sbn'). (The reference PatchGAN uses per-GPU BatchNorm2d
under DDP; here it also normalises over the global batch.)

Running statistics live in the "batch_stats" collection (mean, var), updated only when
`update_stats=True` (needs mutable=["batch_stats"]):
  ra = momentum * ra + (1 - momentum) * batch_stat    (flax convention; torch momentum 0.1 = 0.9)
with the UNBIASED batch variance, as torch. Normalisation uses the biased variance.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
COLLECTION = "batch_stats"


class BatchNorm(nn.Module):
  """train=True: batch statistics (torch train mode); train=False: running statistics."""

  momentum: float = 0.9
  epsilon: float = 1e-5
  scale_init: Any = nn.initializers.ones
  bias_init: Any = nn.initializers.zeros
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True, update_stats: bool = False) -> jax.Array:
    c = x.shape[-1]
    scale = self.param("scale", self.scale_init, (c,), self.param_dtype)
    bias = self.param("bias", self.bias_init, (c,), self.param_dtype)
    ra_mean = self.variable(COLLECTION, "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable(COLLECTION, "var", lambda: jnp.ones((c,), jnp.float32))

    xf = x.astype(jnp.float32)
    if train:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(xf, axis=axes)
      var = jnp.mean(jnp.square(xf - mean), axis=axes)  # biased, two-pass
      if update_stats and not self.is_initializing():
        n = math.prod(x.shape[:-1])
        unbiased = var * (n / max(n - 1, 1))
        m = self.momentum
        ra_mean.value = m * ra_mean.value + (1.0 - m) * jax.lax.stop_gradient(mean)
        ra_var.value = m * ra_var.value + (1.0 - m) * jax.lax.stop_gradient(unbiased)
    else:
      mean, var = ra_mean.value, ra_var.value
    y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon)
    return y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
