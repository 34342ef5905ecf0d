"""Perceptual (LPIPS-VGG16) loss as pure functions for the tokenizer trainer (SPEC §1.4).

`params` = {"vgg": ..., "lin": ...} is the frozen LPIPS pytree from
`softvq_jax.weights.lpips.load_lpips_params`; pass it to the jitted step as an argument (not a
closure, so it is not baked into the executable as constants) and keep it out of the optimiser.
It is stop_gradient'ed here; gradients flow to the images only.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from softvq_jax.models.frozen.vgg import LPIPS, normalized_features

Dtype = Any


def real_features(params: Any, x: jax.Array, dtype: Dtype = jnp.float32) -> tuple:
  """The target images' normalised VGG features, without gradient: pass them as `x_feats`.

  A training step computes them once and reuses them (the generator pass, the adaptive weight),
  and VGG is then differentiated for the reconstructions only, not for a 2B batch of which half
  needs no gradient.
  """
  params = jax.lax.stop_gradient(params)
  x = jax.lax.stop_gradient(x)
  return jax.lax.stop_gradient(normalized_features(params["vgg"], x, dtype))


def lpips(
  params: Any, x: jax.Array, y: jax.Array, dtype: Dtype = jnp.float32, x_feats=None
) -> jax.Array:
  """LPIPS distance per sample: x, y (B, H, W, 3) in [-1, 1], H, W >= 16 -> (B,) float32.

  `dtype` is the VGG conv compute dtype (float32 by default; normalisation, differences and heads
  are always float32). `x_feats`: `real_features(params, x)`, computed beforehand.
  """
  model = LPIPS(dtype=dtype)
  return model.apply({"params": jax.lax.stop_gradient(params)}, x, y, x_feats)


def lpips_loss(
  params: Any, x: jax.Array, y: jax.Array, dtype: Dtype = jnp.float32, x_feats=None
) -> jax.Array:
  """Batch mean of `lpips` (the reference's `p_loss = mean(LPIPS(x, x_rec))`), a float32 scalar."""
  return jnp.mean(lpips(params, x, y, dtype, x_feats))


def perceptual_weight_at(step: jax.Array | int, weight: float, warmup: int | None) -> jax.Array:
  """Perceptual weight at the 1-based global step: weight * min(1, step / warmup).

  As the reference (`global_step = train_steps + 1`): the first update (step 1) uses
  weight / warmup and step `warmup` onwards the full weight. warmup None or <= 0: constant weight.
  """
  if not warmup or warmup <= 0:
    return jnp.float32(weight)
  ramp = jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / jnp.float32(warmup))
  return jnp.float32(weight) * ramp
