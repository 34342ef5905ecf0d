"""The bundled photo dataset: real photographs that install offline with scikit-image/learn.

Train: scikit-image's astronaut, chelsea, coffee, rocket, hubble_deep_field,
immunohistochemistry, retina and the stereo motorcycle pair (public domain / CC0). Held out for
evaluation: scikit-learn's `china` and `flower` (CC-BY-2.0). Labels are the image index.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

TRAIN_NAMES = (
  "astronaut",
  "chelsea",
  "coffee",
  "rocket",
  "hubble_deep_field",
  "immunohistochemistry",
  "retina",
  "motorcycle_left",
  "motorcycle_right",
)
EVAL_NAMES = ("china", "flower")


@functools.cache
def _load(name: str) -> np.ndarray:
  if name in EVAL_NAMES:
    from sklearn.datasets import load_sample_image

    return load_sample_image(f"{name}.jpg")
  import skimage.data

  if name.startswith("motorcycle_"):
    left, right, _ = skimage.data.stereo_motorcycle()
    return left if name.endswith("left") else right
  return getattr(skimage.data, name)()


class PhotoSource:
  """Random access to the bundled photos of one split ('train' or 'eval')."""

  def __init__(self, split: str):
    if split not in ("train", "eval"):
      raise ValueError(f"photos split {split!r}; use 'train' or 'eval'")
    self.names = TRAIN_NAMES if split == "train" else EVAL_NAMES

  def __len__(self) -> int:
    return len(self.names)

  location = "data.name='photos'"

  def load(self, index: int, draft: int | None = None) -> tuple[Image.Image, int]:
    """(image, label); `draft` is ignored (the photos are decoded once, kept as arrays)."""
    del draft
    return Image.fromarray(_load(self.names[index])), index
