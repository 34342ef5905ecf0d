"""DiT ancestral sampling (ADM `p_sample_loop`) over the respaced steps of a `GaussianDiffusion`.

CFG guides ALL eps channels (the original DiT guided 3 only) and keeps the conditional half's
variance. The diffusion itself (schedules, posterior, training loss) is `objectives/diffusion.py`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from softvq_jax.objectives.diffusion import GaussianDiffusion, p_mean_variance
from softvq_jax.sampling import cfg as cfg_lib
from softvq_jax.sampling.sde import draw_noise


def diffusion_sample(
  d: GaussianDiffusion,
  model_fn: cfg_lib.ModelFn,
  x_init: jax.Array,
  y: jax.Array,
  *,
  cfg_scale: float = 1.0,
  null_label: int = 1000,
  noise: jax.Array | None = None,
  key: jax.Array | None = None,
) -> jax.Array:
  """Ancestral p_sample_loop over all (respaced) steps from x_init (B, ..., C); returns x_0.

  `model_fn(x, step, y)` returns (B, ..., 2C). Noise: `(num_steps, *x.shape)` (entry i is used at
  the i-th step, i.e. t = num_steps - 1 - i; the last one is unused), a key, or per-sample
  keys (B,) (see `sde.draw_noise`).
  """
  if (noise is None) == (key is None):
    raise ValueError("diffusion_sample needs exactly one of `noise` or `key`")
  n = d.num_steps
  c = x_init.shape[-1]
  guided = cfg_scale > 1.0
  fn = (
    cfg_lib.guided(model_fn, y, cfg_scale, null_label, channels=c)
    if guided
    else cfg_lib.unguided(model_fn, y)
  )
  ts = np.arange(n)[::-1].copy()

  def step(x, s):
    i, t, eps = s
    tb = jnp.full((x.shape[0],), t, jnp.int32)
    out = fn(x, jnp.asarray(d.timestep_map)[tb]).astype(x.dtype)
    p = p_mean_variance(d, out, x, tb)
    if key is not None:
      eps = draw_noise(key, i, x.shape, x.dtype)
    nonzero = (t != 0).astype(x.dtype)
    return p["mean"] + nonzero * jnp.exp(0.5 * p["log_variance"]) * eps

  eps_all = jnp.zeros((n,), x_init.dtype) if noise is None else noise.astype(x_init.dtype)
  xs = (jnp.arange(n), jnp.asarray(ts, jnp.int32), eps_all)
  return cfg_lib.run_steps(lambda _: step, x_init, xs, [guided] * n)
