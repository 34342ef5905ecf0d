"""Image preprocessing shared by every dataset: ADM crops, flips, RGB conversion, [-1, 1] floats.

`center_crop_arr` and `random_crop_arr` follow ADM (guided-diffusion) exactly as the reference
uses them: BOX halving while the short side is at least twice the target, BICUBIC to the final
size, then a center or uniformly random square crop. Randomness comes from a numpy Generator, so
a sample's crop is a pure function of its seed.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


def to_rgb(image: Image.Image) -> Image.Image:
  """Any PIL mode (L, LA, P, RGBA, CMYK, I;16, ...) -> RGB; alpha is composited on white."""
  if image.mode == "RGB":
    return image
  if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")
  if image.mode.startswith("I;16") or image.mode in ("I", "F"):
    arr = np.asarray(image, np.float64)
    hi = 65535.0 if image.mode.startswith("I") and arr.max() > 255 else 255.0
    image = Image.fromarray(np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8))
  return image.convert("RGB")


def _resize_short_side(image: Image.Image, short: int) -> Image.Image:
  while min(*image.size) >= 2 * short:
    image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
  scale = short / min(*image.size)
  return image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)


def center_crop_arr(image: Image.Image, image_size: int) -> np.ndarray:
  """ADM evaluation crop -> uint8 (S, S, 3)."""
  arr = np.asarray(_resize_short_side(to_rgb(image), image_size))
  y = (arr.shape[0] - image_size) // 2
  x = (arr.shape[1] - image_size) // 2
  return np.ascontiguousarray(arr[y : y + image_size, x : x + image_size])


def random_crop_arr(
  image: Image.Image,
  image_size: int,
  rng: np.random.Generator,
  min_crop_frac: float = 0.8,
  max_crop_frac: float = 1.0,
) -> np.ndarray:
  """ADM training crop: short side resized to U{ceil(S/max) .. ceil(S/min)}, random S x S crop."""
  lo = math.ceil(image_size / max_crop_frac)
  hi = math.ceil(image_size / min_crop_frac)
  short = int(rng.integers(lo, hi + 1))
  arr = np.asarray(_resize_short_side(to_rgb(image), short))
  y = int(rng.integers(0, arr.shape[0] - image_size + 1))
  x = int(rng.integers(0, arr.shape[1] - image_size + 1))
  return np.ascontiguousarray(arr[y : y + image_size, x : x + image_size])


def to_float(images: np.ndarray) -> np.ndarray:
  """uint8 -> float32 in [-1, 1] (x / 127.5 - 1, the reference's Normalize(0.5, 0.5))."""
  return images.astype(np.float32) / 127.5 - 1.0


def float_images(batch: dict) -> dict:
  """On device (inside jit): a uint8 "image" -> float32 in [-1, 1]; float images pass through.

  Used by the training loop when the pipeline ships uint8 (data.uint8_transfer, 4x less
  host->device traffic, no host float conversion). XLA may turn the division into a reciprocal
  multiply, so values can differ from `to_float` by 1 ulp; a run is consistent with itself.
  """
  import jax.numpy as jnp

  image = batch.get("image")
  if image is None or image.dtype != jnp.uint8:
    return batch
  return {**batch, "image": image.astype(jnp.float32) / 127.5 - 1.0}
