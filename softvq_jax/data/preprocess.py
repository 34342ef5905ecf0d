"""Image preprocessing shared by every dataset: ADM crops, flips, RGB conversion, [-1, 1] floats.

`center_crop_arr` and `random_crop_arr` follow ADM (guided-diffusion) exactly as the reference
uses them: BOX halving while the short side is at least twice the target, BICUBIC to the final
size, then a center or uniformly random square crop. Randomness comes from a numpy Generator, so
a sample's crop is a pure function of its seed. The random crop draws its short side first
(`random_short_side`), so the pipeline can tell the decoder the target before decoding.
`crop_at_short_side(..., exact=False)` (data.exact_resize=False, the training default) resizes
only the crop's window (data/window.py): same geometry and draws, values within 2 levels.

`draft_jpeg` (data.jpeg_draft, off by default) lets libjpeg decode at 1/2, 1/4 or 1/8 scale
(DCT-domain scaling, PIL `Image.draft`) as many times as the BOX halving would halve anyway: an
8000x6000 JPEG for a 256 px crop decodes at 1000x750 (0.57 s -> 0.075 s here). The geometry is
kept exactly (same resized size, same crop positions), but the pixels are NOT bitwise those of
the full decode + BOX halving: DCT scaling is another low-pass filter. Measured on the 11
bundled photos saved as JPEG q95, 8 ADM random crops each, over the crops that get drafted:
mean |diff| 3.1 / 2.2 / 1.8 / 1.0 uint8 levels at 32 / 64 / 128 / 256 px, worst crop 7.2 /
6.0 / 4.1 / 1.3, largest single pixel 81 / 79 / 103 / 29 (point-like stars of the Hubble field).
ImageNet photos (~500x375) are rarely halved at 256 px, so it matters for large photos only.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from softvq_jax.data import window


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


MAX_DRAFT_SCALE = 8  # libjpeg scales by 1/2, 1/4 or 1/8


def halvings(size: tuple[int, int], short: int) -> int:
  """How many times the ADM resize BOX-halves an image of `size` before resizing to `short`."""
  w, h = size
  k = 0
  while min(w, h) >= 2 * short:
    w, h, k = w // 2, h // 2, k + 1
  return k


DRAFT_INFO = "softvq_draft"  # image.info key: (full width, full height, draft scale)


def draft_jpeg(image: Image.Image, short: int) -> int:
  """Before `image.load()`: decode a JPEG at 1/2^d scale, d = the BOX halvings it would get.

  d is at most 3 (1/8, libjpeg's limit). The full size is kept in `image.info[DRAFT_INFO]`, so
  the ADM resize reproduces the full decode's geometry exactly: the remaining halvings, and the
  BICUBIC resize to the size the full image would get (hence the same crop positions); only the
  pixel values differ (DCT-domain scaling is another low-pass filter; see the module
  docstring). A no-op (returns 1) for other formats, already loaded (tile-less) images and
  images that are not halved. Returns the scale used. Only used when data.jpeg_draft is set.
  """
  if image.format != "JPEG" or not short or not getattr(image, "tile", None):
    return 1
  scale = min(2 ** halvings(image.size, short), MAX_DRAFT_SCALE)
  if scale == 1:
    return 1
  w, h = image.size
  # PIL picks the largest scale s in {8, 4, 2, 1} with s <= min(w // rw, h // rh): requesting
  # (w // scale, h // scale) selects exactly `scale` (w // (w // scale) < 2 * scale).
  image.draft(image.mode, (w // scale, h // scale))
  image.info[DRAFT_INFO] = (w, h, scale)
  return scale


def _halve(image: Image.Image, short: int) -> tuple[Image.Image, tuple[int, int]]:
  """ADM's BOX halvings while the short side is >= 2 * short -> (image, the full image's size).

  The size is that of the full decode after the halvings (a drafted JPEG is smaller; the
  BICUBIC resize then maps it to the full decode's geometry).
  """
  w, h, scale = image.info.get(DRAFT_INFO, (*image.size, 1))
  k = halvings((w, h), short)
  for _ in range(k):  # the full image's sizes along the halving chain
    w, h = w // 2, h // 2
  for _ in range(k - scale.bit_length() + 1):  # halvings the JPEG draft did not do
    image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
  return image, (w, h)


def resized_size(size: tuple[int, int], short: int) -> tuple[int, int]:
  """(w, h) -> the ADM BICUBIC target: short side `short`, the other rounded (as the reference)."""
  ratio = short / min(size)
  return round(size[0] * ratio), round(size[1] * ratio)


def _crop(image: Image.Image, short: int, s: int, place, exact: bool) -> np.ndarray:
  """Short side resized to `short` (ADM), the S x S window at `place(max_y, max_x)` -> (y, x).

  exact: the whole image resized, then cropped (bitwise the reference); else only the window is
  resized (`window.resize_window`: same geometry and draws, values within 2 levels).
  """
  image, size = _halve(to_rgb(image), short)
  nw, nh = resized_size(size, short)
  y, x = place(nh - s, nw - s)
  if not exact:
    arr = window.resize_window(image, (nw, nh), x, y, s)
    if arr is not None:  # None: a Pillow whose pass order is unknown (then the exact path)
      return arr
  arr = np.asarray(image.resize((nw, nh), resample=Image.BICUBIC))
  return np.ascontiguousarray(arr[y : y + s, x : x + s])


def center_crop_arr(image: Image.Image, image_size: int, exact: bool = True) -> np.ndarray:
  """ADM evaluation crop -> uint8 (S, S, 3); exact=False: see `_crop` (training only)."""
  return _crop(image, image_size, image_size, lambda my, mx: (my // 2, mx // 2), exact)


def random_short_side(
  image_size: int, rng: np.random.Generator, min_crop_frac: float = 0.8, max_crop_frac: float = 1.0
) -> int:
  """The ADM training crop's first draw: the resized short side, U{ceil(S/max) .. ceil(S/min)}."""
  lo = math.ceil(image_size / max_crop_frac)
  hi = math.ceil(image_size / min_crop_frac)
  return int(rng.integers(lo, hi + 1))


def crop_at_short_side(
  image: Image.Image, image_size: int, short: int, rng: np.random.Generator, exact: bool = True
) -> np.ndarray:
  """The rest of the ADM training crop: short side resized to `short`, random S x S crop.

  exact=False (data.exact_resize=False) resizes only the crop's window: same geometry and
  draws (y, then x), ~1.6x less CPU, a few values one or two levels apart (data/window.py).
  """

  def place(max_y: int, max_x: int) -> tuple[int, int]:
    return int(rng.integers(0, max_y + 1)), int(rng.integers(0, max_x + 1))

  return _crop(image, short, image_size, place, exact)


def flip_left_right(arr: np.ndarray) -> np.ndarray:
  """(H, W, C) mirrored left-right as a contiguous copy (whole pixels moved at once: ~2x faster
  than numpy's strided uint8 copy of `arr[:, ::-1]`)."""
  arr = np.ascontiguousarray(arr)
  pixel = np.dtype((np.void, arr.shape[-1] * arr.itemsize))
  return arr.view(pixel)[:, ::-1].copy().view(arr.dtype).reshape(arr.shape)


def random_crop_arr(
  image: Image.Image,
  image_size: int,
  rng: np.random.Generator,
  min_crop_frac: float = 0.8,
  max_crop_frac: float = 1.0,
) -> np.ndarray:
  """ADM training crop: short side resized to U{ceil(S/max) .. ceil(S/min)}, random S x S crop."""
  short = random_short_side(image_size, rng, min_crop_frac, max_crop_frac)
  return crop_at_short_side(image, image_size, short, rng)


def to_float(images: np.ndarray) -> np.ndarray:
  """uint8 -> float32 in [-1, 1] (x / 127.5 - 1, the reference's Normalize(0.5, 0.5))."""
  return images.astype(np.float32) / 127.5 - 1.0


def to_float_into(images: np.ndarray, out: np.ndarray) -> np.ndarray:
  """`to_float(images)` written into `out` (float32, same shape): bitwise the same values."""
  np.divide(images, np.float32(127.5), out=out, dtype=np.float32)
  return np.subtract(out, np.float32(1.0), out=out)


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
