"""Encoded image bytes -> a loaded PIL image, for every file-based source (folders, TFDS).

Decoding from bytes (the whole file read first) keeps no file open after the call, whatever
the format (multi-frame GIF/TIFF included). With `draft` (a target short side, data.jpeg_draft)
a JPEG is decoded at the reduced size the ADM resize would halve it to anyway
(`preprocess.draft_jpeg`): an 8000x6000 photo for a 256 px crop decodes at 1000x750.
"""

from __future__ import annotations

import io
import warnings

from etils import epath
from PIL import Image

from softvq_jax.data import preprocess
from softvq_jax.data.pipeline import BadImage


def decode_image(data: bytes, name: str = "", draft: int | None = None) -> Image.Image:
  """Encoded image bytes -> a loaded PIL image (any mode); BadImage when undecodable."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # EXIF / palette / truncated-file warnings
      image = Image.open(io.BytesIO(data))
      if draft:
        preprocess.draft_jpeg(image, draft)
      image.load()
      return image
  except Exception as e:  # PIL raises many types for broken files
    raise BadImage(f"{name or '<bytes>'}: {type(e).__name__}: {e}") from e


def read_image(path, draft: int | None = None) -> Image.Image:
  """The image file at `path`, loaded; BadImage when it cannot be read or decoded."""
  try:
    with epath.Path(path).open("rb") as f:  # local or gs://
      data = f.read()
  except OSError as e:
    raise BadImage(f"{path}: {type(e).__name__}: {e}") from e
  return decode_image(data, str(path), draft)
