"""Probability-flow ODE sampler for SiT velocity models (Euler or Heun), SPEC §2.2.

`t = linspace(1, 0, steps + 1)` (float64 on the host), `x <- x + (t_next - t_cur) v`; Heun adds
a second evaluation at t_next on every step but the last. CFG follows `cfg.py` (guided when
`low <= t_cur <= high`, also for the Heun evaluation). The state dtype defaults to the noise's
dtype (float32); pass `state_dtype=jnp.float64` under `jax.enable_x64()` to match the reference's
float64 state exactly. Traceable: wrap in `jax.jit` with the model params as an argument.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from softvq_jax.sampling import cfg as cfg_lib


def ode_time_grid(steps: int) -> np.ndarray:
  """(steps + 1,) float64 times from 1 (noise) to 0 (data)."""
  if steps < 1:
    raise ValueError(f"ODE sampler needs steps >= 1, got {steps}")
  return np.linspace(1.0, 0.0, steps + 1)


def ode_sample(
  model_fn: cfg_lib.ModelFn,
  noise: jax.Array,
  y: jax.Array,
  *,
  steps: int = 50,
  heun: bool = False,
  cfg_scale: float = 1.0,
  cfg_interval: tuple[float, float] = (0.0, 1.0),
  null_label: int = 1000,
  state_dtype=None,
) -> jax.Array:
  """Integrates dx/dt = v(x, t, y) from t=1 (x = noise, (B, ...)) to t=0; returns x_0.

  `model_fn(x, t, y)` is called in the noise's dtype with t (B,) and labels y (B,).
  """
  t = ode_time_grid(steps)
  t_cur, t_next = t[:-1], t[1:]
  guided = cfg_lib.guidance_mask(t_cur, cfg_scale, cfg_interval)
  keys = [(bool(g), heun and i < steps - 1) for i, g in enumerate(guided)]
  fns = cfg_lib.velocity_fns(model_fn, y, cfg_scale, null_label)
  model_dtype = noise.dtype
  sd = state_dtype or noise.dtype

  def make_step(key):
    g, use_heun = key
    fn = fns[g]

    def vel(x, t_model):
      tb = jnp.full((x.shape[0],), t_model, model_dtype)
      return fn(x.astype(model_dtype), tb).astype(sd)

    def step(x, s):
      tc_m, tn_m, dt = s
      d = vel(x, tc_m)
      x_next = x + dt * d
      if use_heun:
        x_next = x + dt * (0.5 * d + 0.5 * vel(x_next, tn_m))
      return x_next

    return step

  xs = (
    jnp.asarray(t_cur, model_dtype),
    jnp.asarray(t_next, model_dtype),
    jnp.asarray(t_next - t_cur, sd),
  )
  return cfg_lib.run_steps(make_step, noise.astype(sd), xs, keys)
