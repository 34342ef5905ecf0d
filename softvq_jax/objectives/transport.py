"""Stochastic interpolants for SiT (SPEC §2.2): paths, time sampling, the v-prediction loss.

t = 1 is noise and t = 0 is data: `x_t = alpha(t) x + sigma(t) eps`. Paths: linear (alpha = 1 - t,
sigma = t) and cosine (alpha = cos(pi t / 2), sigma = sin(pi t / 2)). Predictions: velocity
(`alpha' x + sigma' eps`, the reference), noise (eps) or score (-eps / sigma).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

PATHS = ("linear", "cosine")
PREDICTIONS = ("v", "noise", "score")
TIME_SAMPLING = ("uniform", "lognormal")


def _check(name: str, value: str, choices) -> None:
  if value not in choices:
    raise ValueError(f"unknown {name} {value!r}; choose one of {list(choices)}")


def path_coefficients(t, path: str = "linear"):
  """(alpha, sigma, d_alpha, d_sigma) at t (any shape, any float dtype; numpy or jax)."""
  _check("path", path, PATHS)
  xp = np if isinstance(t, np.ndarray | float) else jnp
  if path == "linear":
    return 1 - t, t, -xp.ones_like(t), xp.ones_like(t)
  h = np.pi / 2
  return xp.cos(h * t), xp.sin(h * t), -h * xp.sin(h * t), h * xp.cos(h * t)


def expand_like(t: jax.Array, x: jax.Array) -> jax.Array:
  """(B,) -> (B, 1, ..., 1) broadcastable against x."""
  return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))


def score_from_velocity(v: jax.Array, x: jax.Array, t: jax.Array, path: str = "linear"):
  """s = ((alpha/alpha') v - x) / (sigma^2 - (alpha/alpha') sigma' sigma); t (B,) or scalar."""
  t = expand_like(jnp.asarray(t, x.dtype), x) if jnp.ndim(t) else jnp.asarray(t, x.dtype)
  alpha, sigma, d_alpha, d_sigma = path_coefficients(t, path)
  ratio = alpha / d_alpha
  return (ratio * v - x) / (sigma**2 - ratio * d_sigma * sigma)


def sample_time(key: jax.Array, batch: int, kind: str = "uniform", path: str = "linear"):
  """(batch,) float32 times in [0, 1]: uniform, or lognormal s = exp(N(0,1)) mapped per path."""
  _check("time sampling", kind, TIME_SAMPLING)
  _check("path", path, PATHS)
  if kind == "uniform":
    return jax.random.uniform(key, (batch,))
  s = jnp.exp(jax.random.normal(key, (batch,)))
  return s / (1 + s) if path == "linear" else (2 / np.pi) * jnp.arctan(s)


def interpolate(x: jax.Array, eps: jax.Array, t: jax.Array, path: str = "linear"):
  """(x_t, v_target) for data x, noise eps, times t (B,)."""
  alpha, sigma, d_alpha, d_sigma = path_coefficients(expand_like(t, x), path)
  return alpha * x + sigma * eps, d_alpha * x + d_sigma * eps


def prediction_target(x, eps, t, path: str = "linear", prediction: str = "v"):
  """What the network regresses: velocity, noise eps, or score -eps / sigma."""
  _check("prediction", prediction, PREDICTIONS)
  x_t, v = interpolate(x, eps, t, path)
  if prediction == "v":
    return x_t, v
  if prediction == "noise":
    return x_t, eps
  sigma = path_coefficients(expand_like(t, x), path)[1]
  return x_t, -eps / sigma


def training_loss(
  model_fn: Callable[[jax.Array, jax.Array], jax.Array],
  x: jax.Array,
  key: jax.Array,
  *,
  path: str = "linear",
  prediction: str = "v",
  time_sampling: str = "uniform",
) -> jax.Array:
  """Per-sample MSE (B,) of `model_fn(x_t, t)` against the target, mean over non-batch axes."""
  k_t, k_eps = jax.random.split(key)
  t = sample_time(k_t, x.shape[0], time_sampling, path)
  eps = jax.random.normal(k_eps, x.shape, x.dtype)
  x_t, target = prediction_target(x, eps, t, path, prediction)
  out = model_fn(x_t, t).astype(jnp.float32)
  return jnp.mean((out - target.astype(jnp.float32)) ** 2, axis=tuple(range(1, x.ndim)))
