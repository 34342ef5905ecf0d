"""Classifier-free guidance and the guidance interval, shared by the ODE/SDE/diffusion samplers.

The batch is doubled ONCE per model evaluation ([x; x] with labels [y; null]), one model call of
2B, then `d_u + scale (d_c - d_u)` (the reference sampling scripts doubled it twice). Whether a
step is guided is decided from its (static) time `t_cur`: `low <= t_cur <= high`, so each run of
consecutive guided / unguided steps becomes its own `lax.scan` and unguided steps cost B, not 2B.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# model_fn(x, t, y) -> output with x's leading shape; t (B,), y (B,) int.
ModelFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def guided(
  model_fn: ModelFn, y: jax.Array, scale: float, null_label: int, channels: int | None = None
):
  """fn(x, t) -> guided output, one model call on the doubled batch.

  `channels`: guide only the first `channels` output channels (DiT's eps half) and keep the rest
  from the conditional half; None guides everything.
  """
  y2 = jnp.concatenate([y, jnp.full_like(y, null_label)])

  def fn(x, t):
    out = model_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), y2)
    cond, uncond = jnp.split(out, 2)
    if channels is None:
      return uncond + scale * (cond - uncond)
    g = uncond[..., :channels] + scale * (cond[..., :channels] - uncond[..., :channels])
    return jnp.concatenate([g, cond[..., channels:]], axis=-1)

  return fn


def unguided(model_fn: ModelFn, y: jax.Array):
  """fn(x, t) -> model_fn(x, t, y)."""
  return lambda x, t: model_fn(x, t, y)


def guidance_mask(t_cur: Sequence[float], scale: float, interval=(0.0, 1.0)) -> np.ndarray:
  """Static bool per step: guided when scale > 1 and low <= t_cur <= high (reference rule)."""
  lo, hi = interval
  t = np.asarray(t_cur, np.float64)
  return (scale > 1.0) & (t >= lo) & (t <= hi)


def segments(keys: Sequence) -> list[tuple[int, int, object]]:
  """Runs of equal keys: [(start, stop, key)] covering range(len(keys))."""
  out, start = [], 0
  for i in range(1, len(keys) + 1):
    if i == len(keys) or keys[i] != keys[start]:
      out.append((start, i, keys[start]))
      start = i
  return out


def run_steps(make_step: Callable, x, xs, keys: Sequence):
  """Scans `make_step(key)(x, xs_i) -> x` over the steps, one `lax.scan` per run of equal keys.

  `xs` is a pytree of per-step arrays with leading axis len(keys); keys are static (hashable),
  e.g. whether the step is guided, so the doubled batch only runs where guidance is on.
  """
  for start, stop, key in segments(list(keys)):
    seg = jax.tree.map(lambda a, start=start, stop=stop: a[start:stop], xs)
    step = make_step(key)
    x, _ = jax.lax.scan(lambda c, s, step=step: (step(c, s), None), x, seg)
  return x


def velocity_fns(model_fn: ModelFn, y: jax.Array, scale: float, null_label: int, channels=None):
  """{False: unguided fn(x, t), True: guided fn(x, t)} for `run_steps` keys."""
  return {False: unguided(model_fn, y), True: guided(model_fn, y, scale, null_label, channels)}
