"""Per-image reconstruction metrics in JAX: PSNR, SSIM (as scikit-image computes it), MSE.

Images are compared as uint8 from `softvq_jax.utils.images.to_uint8` (ADM rounding).

SSIM matches `skimage.metrics.structural_similarity(x, y, data_range=R, channel_axis=-1,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`: an 11x11 Gaussian window
(truncate 3.5), reflect padding, K1 0.01, K2 0.03, mean over the interior (5-pixel border cropped)
and channels. Pass the data range of the images (255 for uint8; the reference passed 2.0 for
images in [0, 1], which inflates SSIM).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# The ADM uint8 conversion (`rounding="adm"` default), re-exported for the metric callers.
from softvq_jax.utils.images import to_uint8  # noqa: F401


@jax.jit
def mse(x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean squared error per image: (B, H, W, C) -> (B,)."""
  d = jnp.asarray(x, jnp.float32) - jnp.asarray(y, jnp.float32)
  return jnp.mean(jnp.square(d), axis=(1, 2, 3))


@jax.jit
def psnr(x: jax.Array, y: jax.Array, data_range: float) -> jax.Array:
  """Peak signal-to-noise ratio per image in dB: (B, H, W, C) -> (B,)."""
  return 10.0 * jnp.log10(data_range**2 / mse(x, y))


def _gaussian_kernel(sigma: float, truncate: float) -> np.ndarray:
  radius = int(truncate * sigma + 0.5)
  t = np.arange(-radius, radius + 1, dtype=np.float64)
  k = np.exp(-0.5 * (t / sigma) ** 2)
  return (k / k.sum()).astype(np.float32)


def _filter(x: jax.Array, k: jax.Array) -> jax.Array:
  """Separable Gaussian filter with scipy 'reflect' (= numpy 'symmetric') padding; x (B,H,W,C)."""
  r = (k.shape[0] - 1) // 2
  x = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode="symmetric")
  h, w = x.shape[1] - 2 * r, x.shape[2] - 2 * r
  x = sum(k[i] * x[:, i : i + h] for i in range(k.shape[0]))
  return sum(k[i] * x[:, :, i : i + w] for i in range(k.shape[0]))


@functools.partial(jax.jit, static_argnames=("sigma",))
def ssim(x: jax.Array, y: jax.Array, data_range: float, sigma: float = 1.5) -> jax.Array:
  """Structural similarity per image: (B, H, W, C) -> (B,). Images need H, W >= 11."""
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.float32)
  k = jnp.asarray(_gaussian_kernel(sigma, 3.5))
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  ux, uy = _filter(x, k), _filter(y, k)
  vx = _filter(x * x, k) - ux * ux
  vy = _filter(y * y, k) - uy * uy
  vxy = _filter(x * y, k) - ux * uy
  s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
  pad = (k.shape[0] - 1) // 2
  return jnp.mean(s[:, pad:-pad, pad:-pad, :], axis=(1, 2, 3))
