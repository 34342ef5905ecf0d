"""Image grids and PNG writing (atomic) for reconstructions and samples."""

from __future__ import annotations

import os
import pathlib
import tempfile

import numpy as np
from PIL import Image


def as_uint8(images) -> np.ndarray:
  """uint8 passes through; floats are taken to be in [-1, 1] (clipped, rounded)."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images
  return np.clip(np.round((images.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_grid(images, ncols: int = 8, pad: int = 2, pad_value: int = 255) -> np.ndarray:
  """(N, H, W, 3) -> one uint8 (rows*(H+pad)+pad, cols*(W+pad)+pad, 3) image."""
  images = as_uint8(images)
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
  a, b = as_uint8(originals), as_uint8(reconstructions)
  pairs = np.stack([a, b], axis=1).reshape(-1, *a.shape[1:])
  return make_grid(pairs, ncols=2 * ncols)


def save_png(path: str | os.PathLike, image: np.ndarray) -> pathlib.Path:
  """Writes a uint8 (H, W, 3) PNG atomically (temp file in the same folder, then rename)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
  try:
    with os.fdopen(fd, "wb") as f:
      Image.fromarray(as_uint8(image)).save(f, format="PNG")
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path
