"""Euler–Maruyama SDE sampler for SiT velocity models (the one behind the published numbers).

Exactly the reference rule (SPEC §2.2): t from 1 to `t_last`=0.04 in `steps` points, then 0;
diffusion `w = 2 t` for both paths; score from the velocity
`s = ((alpha/alpha') v - x) / (sigma^2 - (alpha/alpha') sigma' sigma)`; drift `v - w s / 2`;
`x <- x + drift dt + sqrt(w) sqrt(|dt|) eps` for the first steps-1 steps; the last step
(t_last -> 0) is deterministic. CFG on the drift equals CFG on v (the drift is affine in v with
the same x for both halves), so the guided velocity is used. Per-step coefficients are computed
on the host in float64. Noise: pre-drawn `(steps - 1, *x.shape)`, or a key (step i uses
`normal(fold_in(key, i), x.shape)`), or per-sample typed keys (B,) (sample b at step i uses
`normal(fold_in(key[b], i))`, so a sample does not depend on its batch or the device count).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from softvq_jax.objectives.transport import path_coefficients
from softvq_jax.sampling import cfg as cfg_lib


def sde_time_grid(steps: int, t_last: float = 0.04) -> np.ndarray:
  """(steps + 1,) float64: linspace(1, t_last, steps) then 0."""
  if steps < 2:
    raise ValueError(f"Euler–Maruyama sampler needs steps >= 2, got {steps}")
  return np.concatenate([np.linspace(1.0, t_last, steps), [0.0]])


def _score_coefficients(t: np.ndarray, path: str) -> tuple[np.ndarray, np.ndarray]:
  """(ratio, var) with s = (ratio v - x) / var, float64."""
  alpha, sigma, d_alpha, d_sigma = path_coefficients(np.asarray(t, np.float64), path)
  ratio = alpha / d_alpha
  return ratio, sigma**2 - ratio * d_sigma * sigma


def draw_noise(key: jax.Array, i, shape, dtype) -> jax.Array:
  """Step-i noise of `shape`: from one key, or from per-sample keys (B,) (batch-independent)."""
  if jnp.ndim(key) == 1 and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    if key.shape[0] != shape[0]:
      raise ValueError(f"{key.shape[0]} per-sample keys for a batch of {shape[0]}")
    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i), shape[1:], dtype))(key)
  return jax.random.normal(jax.random.fold_in(key, i), shape, dtype)


def sde_sample(
  model_fn: cfg_lib.ModelFn,
  x_init: jax.Array,
  y: jax.Array,
  *,
  steps: int = 250,
  path: str = "linear",
  cfg_scale: float = 1.0,
  cfg_interval: tuple[float, float] = (0.0, 1.0),
  null_label: int = 1000,
  noise: jax.Array | None = None,
  key: jax.Array | None = None,
  t_last: float = 0.04,
  state_dtype=None,
) -> jax.Array:
  """Euler–Maruyama from x_init (noise at t=1, (B, ...)) to t=0; returns the final mean."""
  if (noise is None) == (key is None):
    raise ValueError("sde_sample needs exactly one of `noise` (steps-1, *x.shape) or `key`")
  if noise is not None and tuple(noise.shape) != (steps - 1, *x_init.shape):
    raise ValueError(f"noise must have shape {(steps - 1, *x_init.shape)}, got {noise.shape}")
  t = sde_time_grid(steps, t_last)
  t_cur, t_next = t[:-1], t[1:]
  dt = t_next - t_cur
  w = 2.0 * t_cur
  ratio, var = _score_coefficients(t_cur, path)
  guided = cfg_lib.guidance_mask(t_cur, cfg_scale, cfg_interval)
  last = np.arange(steps) == steps - 1
  keys = [(bool(g), bool(lst)) for g, lst in zip(guided, last, strict=True)]
  fns = cfg_lib.velocity_fns(model_fn, y, cfg_scale, null_label)
  model_dtype = x_init.dtype
  sd = state_dtype or x_init.dtype
  if noise is None:
    noise_sd = jnp.zeros((steps,), sd)  # placeholder per-step entry; drawn from the key inside
  else:
    noise_sd = jnp.concatenate([noise.astype(sd), jnp.zeros((1, *x_init.shape), sd)])

  def make_step(k):
    g, is_last = k
    fn = fns[g]

    def step(x, s):
      i, tc_m, dt_i, w_i, ratio_i, var_i, amp_i, eps = s
      v = fn(x.astype(model_dtype), jnp.full((x.shape[0],), tc_m, model_dtype)).astype(sd)
      score = (ratio_i * v - x) / var_i
      drift = v - 0.5 * w_i * score
      x_next = x + drift * dt_i
      if is_last:
        return x_next
      if key is not None:
        eps = draw_noise(key, i, x.shape, sd)
      return x_next + amp_i * eps

    return step

  c = lambda a: jnp.asarray(a, sd)
  xs = (
    jnp.arange(steps),
    jnp.asarray(t_cur, model_dtype),
    c(dt),
    c(w),
    c(ratio),
    c(var),
    c(np.sqrt(w) * np.sqrt(np.abs(dt))),
    noise_sd,
  )
  return cfg_lib.run_steps(make_step, x_init.astype(sd), xs, keys)
