"""Mixed (learnable-frequency) 2-D RoPE for the image tokens of the tokenizer ViTs.

The reference (MAETok/SoftVQ `rope_utils.py`) learns per-layer, per-head 2-D frequency vectors
`freqs` (2, depth, heads*hd/2) initialised as a random rotation of axial frequencies; the angle of
image token n in layer l, head h, channel pair j is `t_x[n]*fx[l,h,j] + t_y[n]*fy[l,h,j]` with
(t_x, t_y) the column/row of the token in the raster patch grid. Rotation of adjacent channel
pairs is done by `vit.apply_rope` inside `vit.Attention`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def init_t_xy(end_x: int, end_y: int) -> tuple[np.ndarray, np.ndarray]:
  """Column (t_x) and row (t_y) of each of the end_x*end_y raster-ordered tokens, float32."""
  t = np.arange(end_x * end_y, dtype=np.float32)
  return (t % end_x).astype(np.float32), np.floor(t / end_x).astype(np.float32)


def _magnitudes(head_dim: int, theta: float) -> jax.Array:
  # theta^(-4i/hd) for i < hd/4, as the reference's `theta ** (arange(0, hd, 4) / hd)`.
  return 1.0 / (
    theta ** (jnp.arange(0, head_dim, 4, dtype=jnp.float32)[: head_dim // 4] / head_dim)
  )


def random_2d_freqs(key: jax.Array, head_dim: int, num_heads: int, theta: float) -> jax.Array:
  """(2, heads, hd/2) frequencies of one layer: axial magnitudes rotated by a random angle per head.

  fx = [m cos a, m cos(a + pi/2)], fy = [m sin a, m sin(a + pi/2)] with a ~ U(0, 2 pi).
  """
  if head_dim % 4:
    raise ValueError(f"mixed 2-D RoPE needs head_dim % 4 == 0, got head_dim={head_dim}")
  mag = _magnitudes(head_dim, theta)  # (hd/4,)
  a = jax.random.uniform(key, (num_heads, 1), jnp.float32) * 2 * jnp.pi
  fx = jnp.concatenate([mag * jnp.cos(a), mag * jnp.cos(jnp.pi / 2 + a)], axis=-1)
  fy = jnp.concatenate([mag * jnp.sin(a), mag * jnp.sin(jnp.pi / 2 + a)], axis=-1)
  return jnp.stack([fx, fy], axis=0)


def mixed_freqs_init(depth: int, num_heads: int, head_dim: int, theta: float):
  """Initializer for the `freqs` param, shape (2, depth, heads*hd/2), one random draw per layer."""

  def init(key, shape, dtype=jnp.float32):
    expected = (2, depth, num_heads * head_dim // 2)
    if tuple(shape) != expected:
      raise ValueError(f"freqs shape {tuple(shape)} != {expected}")
    keys = jax.random.split(key, depth)
    per_layer = [random_2d_freqs(k, head_dim, num_heads, theta) for k in keys]  # (2, H, hd/2)
    return jnp.stack(per_layer, axis=1).reshape(expected).astype(dtype)

  return init


def mixed_rope_angles(freqs: jax.Array, t_x: jax.Array, t_y: jax.Array, num_heads: int):
  """Rotation angles (depth, heads, N, hd/2) in float32 from `freqs` (2, depth, heads*hd/2)."""
  freqs = freqs.astype(jnp.float32)
  depth = freqs.shape[1]
  n = t_x.shape[0]
  ang = t_x[None, :, None] * freqs[0][:, None, :] + t_y[None, :, None] * freqs[1][:, None, :]
  return ang.reshape(depth, n, num_heads, -1).transpose(0, 2, 1, 3)


def grid_angles(freqs: jax.Array, grid: int, num_heads: int) -> jax.Array:
  """Angles for a `grid` x `grid` raster of image tokens (positions are computed, not params)."""
  t_x, t_y = init_t_xy(grid, grid)
  return mixed_rope_angles(freqs, jnp.asarray(t_x), jnp.asarray(t_y), num_heads)
