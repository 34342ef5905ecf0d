"""The ADM training view of one sample, shared by every image reader.

`TrainData` (random access, pipeline.py) and the tf.data reader (streams.py) crop and
flip with this one function, so a sample's pixels depend only on its image and on (seed, g).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from softvq_jax.data import preprocess


def train_view(
  g: int,
  load: Callable[[int], tuple[Image.Image, int]],
  *,
  seed: int,
  image_size: int,
  random_crop: bool = True,
  random_flip: bool = True,
  min_crop_frac: float = 0.8,
  exact_resize: bool = False,
) -> tuple[np.ndarray, int]:
  """The ADM training view of global sample g: (uint8 (S, S, 3), label).

  `load(short)` gives the (image, label) of the sample (short: the resized short side, for a
  JPEG draft). Random draws, in order: the crop's short side, its position, the flip, all from
  the Generator seeded by (seed, g); shared by every image reader (TrainData, streams.py).
  exact_resize: resize the whole image, then crop (bitwise the reference's ADM crop); False
  resizes only the crop's window (data/window.py; values within 2 levels, ~1.6x less CPU).
  """
  rng = np.random.default_rng([seed, g])
  s = image_size
  short = preprocess.random_short_side(s, rng, min_crop_frac) if random_crop else s
  image, label = load(short)
  if random_crop:
    arr = preprocess.crop_at_short_side(image, s, short, rng, exact=exact_resize)
  else:
    arr = preprocess.center_crop_arr(image, s, exact=exact_resize)
  if random_flip and rng.random() < 0.5:
    arr = preprocess.flip_left_right(arr)
  return arr, label


def write_row(images: np.ndarray, j: int, arr: np.ndarray) -> None:
  """Row j of a batch: the uint8 view as is, or converted to float32 in [-1, 1]."""
  if images.dtype == np.uint8:
    images[j] = arr
  else:
    preprocess.to_float_into(arr, images[j])
