"""[-1, 1] -> uint8 (`to_uint8`, the one conversion), image grids and atomic PNG writing."""

from __future__ import annotations

import os
import pathlib

import numpy as np
from PIL import Image

ROUNDINGS = ("adm", "round")


def to_uint8(images, xp=np, *, rounding: str = "adm"):
  """Images in [-1, 1] -> uint8 (uint8 input passes through); the one conversion in the package.

  rounding="adm" (evaluation: rFID/PSNR/SSIM, as the reference `reconstruct_vq.py` and ADM):
    clamp(127.5 x + 128, 0, 255) then truncated, i.e. round half up.
  rounding="round" (sample npz files, PNG grids and previews):
    clip(round(127.5 (x + 1)), 0, 255) with numpy's round half to even.
  The two differ only where 127.5 (x + 1) is within float32 rounding of a half-integer. Both
  compute in float32. `xp` is numpy (host, returns np.ndarray) or jax.numpy (inside jit; same
  formula, so host and device results agree).
  """
  images = xp.asarray(images)
  if images.dtype == xp.uint8:
    return images
  x = images.astype(xp.float32)
  if rounding == "adm":
    y = 127.5 * x + 128.0
  elif rounding == "round":
    y = xp.round((x + 1.0) * 127.5)
  else:
    raise ValueError(f"rounding={rounding!r}; choose one of {ROUNDINGS}")
  return xp.clip(y, 0, 255).astype(xp.uint8)


def make_grid(images, ncols: int = 8, pad: int = 2, pad_value: int = 255) -> np.ndarray:
  """(N, H, W, 3) -> one uint8 (rows*(H+pad)+pad, cols*(W+pad)+pad, 3) image."""
  images = to_uint8(images, rounding="round")
  n, h, w, c = images.shape
  ncols = max(1, min(ncols, n))
  nrows = -(-n // ncols)
  grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), pad_value, np.uint8)
  for i, im in enumerate(images):
    r, col = divmod(i, ncols)
    y, x = pad + r * (h + pad), pad + col * (w + pad)
    grid[y : y + h, x : x + w] = im
  return grid


def side_by_side(originals, reconstructions, ncols: int = 4) -> np.ndarray:
  """A grid where each original is followed by its reconstruction (ncols pairs per row)."""
  a = to_uint8(originals, rounding="round")
  b = to_uint8(reconstructions, rounding="round")
  pairs = np.stack([a, b], axis=1).reshape(-1, *a.shape[1:])
  return make_grid(pairs, ncols=2 * ncols)


def save_png(path: str | os.PathLike, image: np.ndarray):
  """Writes a uint8 (H, W, 3) PNG atomically, local or `gs://` (see utils.files.atomic_open)."""
  from softvq_jax.utils.files import atomic_open

  with atomic_open(path) as f:
    Image.fromarray(to_uint8(image, rounding="round")).save(f, format="PNG")
  return path if "://" in os.fspath(path) else pathlib.Path(path)
