"""Resampling pretrained ViT weights to another patch size / grid, as timm does (numpy, no torch).

- `resample_patch_kernel`: FlexiViT's pseudo-inverse resize (timm `resample_patch_embed`): with
  B the bilinear map "resize a patch from the old to the new size", the new kernel is
  pinv(B^T) w, so that <B x, w_new> = <x, w_old> for every old-size patch x when upsampling
  (14 -> 16 for DINOv2 at patch 16): the embedding of a resized patch is unchanged.
- `resample_pos_embed`: timm `resample_abs_pos_embed`, the position grid resized bicubically with
  antialiasing, prefix (cls) tokens kept.
Both use torch's antialiased bicubic (`F.interpolate(..., mode='bicubic', antialias=True)`), which
is PIL's separable filter with a = -0.5 and support widened by the downscale factor.
"""

from __future__ import annotations

import math

import numpy as np

from softvq_jax.models.image_ops import cubic_kernel


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) weights of 1-D antialiased bicubic resizing (align_corners=False)."""
  scale = n_in / n_out
  support_scale = max(scale, 1.0)
  support = 2.0 * support_scale
  w = np.zeros((n_out, n_in), np.float64)
  for i in range(n_out):
    center = (i + 0.5) * scale
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), n_in)
    j = np.arange(lo, hi)
    k = cubic_kernel((j - center + 0.5) / support_scale)
    w[i, lo:hi] = k / k.sum()
  return w


def resize_2d(x: np.ndarray, new_hw: tuple[int, int]) -> np.ndarray:
  """Resizes the two leading axes of x (H, W, ...) to new_hw."""
  wy = resize_matrix(x.shape[0], new_hw[0])
  wx = resize_matrix(x.shape[1], new_hw[1])
  return np.einsum("ih,jw,hw...->ij...", wy, wx, x.astype(np.float64))


def resample_patch_kernel(kernel_hwio: np.ndarray, new_hw: tuple[int, int]) -> np.ndarray:
  """Patch-embedding kernel (h, w, in, out) -> (new_h, new_w, in, out) by the PI-resize."""
  h, w = kernel_hwio.shape[:2]
  if (h, w) == tuple(new_hw):
    return np.asarray(kernel_hwio)
  # B: (new_h*new_w, h*w), the resize of a flattened patch; kron of the 1-D maps.
  b = np.kron(resize_matrix(h, new_hw[0]), resize_matrix(w, new_hw[1]))
  pinv = np.linalg.pinv(b.T)  # (new*new, h*w)
  flat = kernel_hwio.reshape(h * w, -1).astype(np.float64)
  out = (pinv @ flat).reshape(*new_hw, *kernel_hwio.shape[2:])
  return out.astype(kernel_hwio.dtype)


def resample_pos_embed(
  pos: np.ndarray, new_grid_hw: tuple[int, int], num_prefix_tokens: int = 1
) -> np.ndarray:
  """(1, prefix + n*n, E) -> (1, prefix + new_h*new_w, E); the grid must be square."""
  prefix, grid = pos[:, :num_prefix_tokens], pos[0, num_prefix_tokens:]
  n = math.isqrt(grid.shape[0])
  if n * n != grid.shape[0]:
    raise ValueError(f"position grid of {grid.shape[0]} tokens is not square")
  if (n, n) == tuple(new_grid_hw):
    return np.asarray(pos)
  new = resize_2d(grid.reshape(n, n, -1), new_grid_hw).reshape(1, -1, grid.shape[-1])
  return np.concatenate([prefix, new.astype(pos.dtype)], axis=1)
