"""The BICUBIC resize of a crop window alone (the training crop with data.exact_resize=False).

The ADM training crop resizes the whole image (short side to U{S/max .. S/min}) and keeps one
random S x S window of it: at 256 px half of the resized pixels are thrown away, and the resize is
~60% of the CPU time of an ImageNet example. `resize_window` computes the window only: Pillow's
two separable BICUBIC passes run one at a time, each on the source rows / columns inside the
filter's support, in the order Pillow itself takes for the whole-image resize (`pass_order`:
Pillow >= 13 runs the vertical pass first when the height shrinks more than twice as much as the
width, older versions always start horizontally; which rule the installed Pillow follows is
checked once, on first use). The filter, its taps, its border clipping and the uint8 rounding
between the passes are Pillow's own.

Not bitwise: Pillow takes the window's box as float32, so the filter's sample positions move by
up to ~2e-5 px and a few values round to the neighbouring level. Measured over the bundled
photos, ImageNet-sized photo JPEGs and random-noise images of every aspect, 32-512 px (tests/
test_window_resize.py bounds it): at most 2 uint8 levels, on 1.6-4.7e-4 of the values. That is
the size of Pillow's own rounding between its passes (Pillow 13's new pass order for tall images
moved the whole-image resize's values by up to 12 levels on noise). Geometry, random draws and
crop positions are those of the exact path.
"""

from __future__ import annotations

import functools
import logging
import math

import numpy as np
from PIL import Image

BICUBIC_SUPPORT = 2.0  # Pillow's bicubic filter support, in source pixels at scale 1


def _horizontal_first_13(w: int, h: int, nw: int, nh: int) -> bool:
  """Pillow >= 13 (ImagingResampleInner): vertical first iff the height shrinks > 2x the width."""
  return not (h - nh > 0 and h - nh > (w - nw) * 2)


def _horizontal_first_always(w: int, h: int, nw: int, nh: int) -> bool:
  del w, h, nw, nh
  return True


RULES = (_horizontal_first_13, _horizontal_first_always)  # Pillow >= 13, older Pillow
# (source size, resized size): shapes that tell the two rules apart, and shapes both agree on.
PROBES = (
  ((100, 600), (90, 300)),
  ((400, 400), (300, 100)),
  ((64, 200), (60, 60)),
  ((600, 100), (300, 90)),
  ((400, 400), (100, 300)),
  ((101, 149), (78, 115)),
  ((500, 375), (341, 256)),
)


def _one_pass(image: Image.Image, horizontal: bool, size: int) -> Image.Image:
  """One separable pass over the whole image (the other axis untouched)."""
  w, h = image.size
  return image.resize((size, h) if horizontal else (w, size), resample=Image.BICUBIC)


@functools.cache
def pass_order():
  """(w, h, nw, nh) -> True when Pillow's BICUBIC resize runs its horizontal pass first.

  Found by resizing small noise images both ways with single-axis passes; None when the
  installed Pillow follows neither known rule (then the exact whole-image resize is used).
  """
  rng = np.random.default_rng(0)
  seen = []
  for (w, h), (nw, nh) in PROBES:
    image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    full = np.asarray(image.resize((nw, nh), resample=Image.BICUBIC))
    hv = np.asarray(_one_pass(_one_pass(image, True, nw), False, nh))
    vh = np.asarray(_one_pass(_one_pass(image, False, nh), True, nw))
    seen.append((np.array_equal(full, hv), np.array_equal(full, vh)))
  for rule in RULES:
    if all(s[0 if rule(w, h, nw, nh) else 1] for s, ((w, h), (nw, nh)) in zip(seen, PROBES)):
      return rule
  logging.warning(
    "Pillow %s resizes in a pass order this code does not know; data.exact_resize=False "
    "falls back to resizing whole images (exact, slower)",
    Image.__version__,
  )
  return None


def _span(start: int, n: int, scale: float, size: int) -> tuple[int, int]:
  """Source pixels [a, b) holding every filter tap of outputs start .. start + n - 1 (+2 margin).

  Inside the image the margin keeps the cropped pass from clipping the filter where the
  whole-image pass does not; at the image's edges the crop ends there, as the image does.
  """
  support = BICUBIC_SUPPORT * max(scale, 1.0)
  a = math.floor((start + 0.5) * scale - support) - 2
  b = math.ceil((start + n - 0.5) * scale + support) + 2
  return max(0, a), min(size, b)


def resize_window(
  image: Image.Image, resized: tuple[int, int], x: int, y: int, s: int
) -> np.ndarray | None:
  """`image.resize(resized, BICUBIC)` cropped to rows y..y+s, columns x..x+s -> uint8 (s, s, C).

  Computed on the window only (see the module docstring); None when the installed Pillow's pass
  order is unknown (the caller then resizes the whole image).
  """
  order = pass_order()
  if order is None:
    return None
  (w, h), (nw, nh) = image.size, resized
  sx, sy = w / nw, h / nh  # resized -> source coordinates
  c0, c1 = _span(x, s, sx, w)
  r0, r1 = _span(y, s, sy, h)
  part = image.crop((c0, r0, c1, r1))
  cw, ch = c1 - c0, r1 - r0
  bx = (x * sx - c0, min((x + s) * sx - c0, cw))  # the window in the part's coordinates
  by = (y * sy - r0, min((y + s) * sy - r0, ch))
  cubic = Image.BICUBIC
  first = order(w, h, nw, nh)
  if order(cw, ch, s, s) == first:  # Pillow's own 2-D resize of the part takes the same order
    return np.asarray(part.resize((s, s), cubic, box=(bx[0], by[0], bx[1], by[1])))
  if first:
    part = part.resize((s, ch), cubic, box=(bx[0], 0, bx[1], ch))
    part = part.resize((s, s), cubic, box=(0, by[0], s, by[1]))
  else:
    part = part.resize((cw, s), cubic, box=(0, by[0], cw, by[1]))
    part = part.resize((s, s), cubic, box=(bx[0], 0, bx[1], s))
  return np.asarray(part)
