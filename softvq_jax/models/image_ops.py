"""Image-space operators shared by the frozen networks and the objectives (numpy/jnp, no params).

ImageNet normalisation of [-1, 1] images, and the (n_out, n_in) matrices of torch's 'area'
(adaptive average pooling) and bicubic (a=-0.75, no antialias) interpolation, applied as einsums.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def cubic_kernel(x: np.ndarray, a: float = -0.5) -> np.ndarray:
  """Keys' cubic convolution kernel (a=-0.5: PIL / torch antialiased; a=-0.75: torch bicubic)."""
  x = np.abs(x)
  return np.where(
    x < 1,
    ((a + 2) * x - (a + 3)) * x * x + 1,
    np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0),
  )


def imagenet_normalize(x: jax.Array) -> jax.Array:
  """x (..., 3) in [-1, 1] -> ((x + 1) / 2 - mean) / std, float32."""
  mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
  std = jnp.asarray(IMAGENET_STD, jnp.float32)
  return (x.astype(jnp.float32) * 0.5 + 0.5 - mean) / std


def area_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) weights of torch 'area' interpolation (= adaptive average pooling)."""
  w = np.zeros((n_out, n_in), np.float64)
  for i in range(n_out):
    s, e = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
    w[i, s:e] = 1.0 / (e - s)
  return w


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) weights of torch bicubic (a=-0.75, align_corners=False, no antialias)."""
  scale = n_in / n_out
  w = np.zeros((n_out, n_in), np.float64)
  for i in range(n_out):
    src = scale * (i + 0.5) - 0.5
    f = int(np.floor(src))
    t = src - f
    for k in range(-1, 3):
      j = min(max(f + k, 0), n_in - 1)  # border pixels are repeated
      w[i, j] += cubic_kernel(np.asarray(t - k), a=-0.75)
  return w
