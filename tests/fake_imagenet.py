"""A tiny fake ImageNet `manual_dir` (the official tar layout) and its offline TFDS preparation.

`make_fake_imagenet` writes ILSVRC2012_img_train.tar (per-synset tars `nXXXXXXXX.tar` of JPEGs)
and ILSVRC2012_img_val.tar (`ILSVRC2012_val_00000001.JPEG`, ...) exactly as the real
`imagenet2012` builder reads them; synsets are the first classes of the builder's own labels.txt
and validation labels come from its validation_labels.txt (the builder assigns them to the
sorted val file names). With `bad_images=True` the first synset also holds a grayscale JPEG, a
CMYK JPEG, a corrupt file and an image smaller than typical crops. `prepare_fake_imagenet`
runs the real builder on it (offline) and returns the TFDS `data_dir`.
"""

from __future__ import annotations

import io
import pathlib
import tarfile

import numpy as np
from PIL import Image

# File names (inside the first synset's tar) of the special training images.
GRAY, CMYK, CORRUPT, SMALL = "gray", "cmyk", "corrupt", "small"
SMALL_SIZE = (20, 14)  # (width, height): smaller than any crop the tests use


def imagenet_synsets() -> list[str]:
  """The 1000 synsets in the order of the builder's ClassLabel (label i = synsets[i])."""
  from tensorflow_datasets.datasets.imagenet2012 import imagenet_common

  return pathlib.Path(imagenet_common.label_names_file()).read_text().split()


def imagenet_validation_synsets() -> list[str]:
  """Synset of the i-th validation image (sorted file names), from the builder's own file."""
  import tensorflow_datasets as tfds

  path = tfds.core.tfds_path("datasets/imagenet2012/validation_labels.txt")
  return pathlib.Path(path).read_text().split()


def _jpeg(image: Image.Image) -> bytes:
  buf = io.BytesIO()
  image.save(buf, format="JPEG", quality=90)
  return buf.getvalue()


def _random_image(rng: np.random.Generator, size: int, label: int) -> Image.Image:
  """A smooth random image (JPEG-friendly) with a class-dependent mean colour."""
  h = size + int(rng.integers(0, size // 2 + 1))
  w = size + int(rng.integers(0, size // 2 + 1))
  coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
  image = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
  tint = np.array([(37 * label) % 256, (91 * label) % 256, (151 * label) % 256], np.float32)
  arr = 0.6 * np.asarray(image, np.float32) + 0.4 * tint
  return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def _photo_image(rng: np.random.Generator, size: int, label: int) -> Image.Image:
  """A random crop of a bundled photo, resized to ImageNet-like dimensions (short side ~size)."""
  from softvq_jax.data.sources.photos import TRAIN_NAMES, _load

  photo = Image.fromarray(_load(TRAIN_NAMES[int(rng.integers(len(TRAIN_NAMES)))])).convert("RGB")
  w, h = photo.size
  cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
  x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
  aspect = rng.choice([4 / 3, 3 / 4, 1.0, 3 / 2])
  short = size + int(rng.integers(0, size // 4 + 1))
  out = (round(short * aspect), short) if aspect >= 1 else (short, round(short / aspect))
  return photo.crop((x, y, x + cw, y + ch)).resize(out, Image.BICUBIC)


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


def make_fake_imagenet(
  root: str | pathlib.Path,
  num_classes: int = 3,
  per_class: int = 4,
  num_val: int = 6,
  size: int = 48,
  bad_images: bool = True,
  seed: int = 0,
  photos: bool = False,
) -> pathlib.Path:
  """Writes a fake manual_dir under `root`; returns it.

  Train: `per_class` JPEGs (short side in [size, 1.5 size]) for each of the first `num_classes`
  synsets, named `<synset>_<i>.JPEG`, plus (bad_images) in the first synset
  `<synset>_gray.JPEG`, `_cmyk.JPEG`, `_small.JPEG` (decodable) and `_corrupt.JPEG` (not).
  Val: `num_val` JPEGs; their labels are the first `num_val` lines of validation_labels.txt.
  `photos=True` uses crops of the bundled photos at ImageNet-like sizes (realistic JPEG decode
  cost, for benchmarks) instead of smooth random images.
  """
  rng = np.random.default_rng(seed)
  make = _photo_image if photos else _random_image
  synsets = imagenet_synsets()[:num_classes]
  manual = pathlib.Path(root) / "manual"
  manual.mkdir(parents=True, exist_ok=True)
  with tarfile.open(manual / "ILSVRC2012_img_train.tar", "w") as train_tar:
    for label, synset in enumerate(synsets):
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode="w") as tar:
        for i in range(per_class):
          _add(tar, f"{synset}_{i}.JPEG", _jpeg(make(rng, size, label)))
        if bad_images and label == 0:
          base = _random_image(rng, size, label)
          _add(tar, f"{synset}_{GRAY}.JPEG", _jpeg(base.convert("L")))
          _add(tar, f"{synset}_{CMYK}.JPEG", _jpeg(base.convert("CMYK")))
          _add(tar, f"{synset}_{SMALL}.JPEG", _jpeg(base.resize(SMALL_SIZE, Image.BICUBIC)))
          # A truncated JPEG: PIL identifies it (valid header), decoding fails.
          good = _jpeg(base)
          _add(tar, f"{synset}_{CORRUPT}.JPEG", good[: len(good) // 2])
      _add(train_tar, f"{synset}.tar", inner.getvalue())
  with tarfile.open(manual / "ILSVRC2012_img_val.tar", "w") as val_tar:
    val_synsets = imagenet_validation_synsets()
    index = {s: i for i, s in enumerate(imagenet_synsets())}
    for i in range(num_val):
      label = index[val_synsets[i]]
      _add(val_tar, f"ILSVRC2012_val_{i + 1:08d}.JPEG", _jpeg(make(rng, size, label)))
  return manual


def prepare_fake_imagenet(
  tmpdir: str | pathlib.Path, file_format: str = "array_record", **fake_kwargs
) -> pathlib.Path:
  """Fake manual_dir + the real `imagenet2012` builder, offline; returns the TFDS data_dir."""
  import tensorflow_datasets as tfds

  tmpdir = pathlib.Path(tmpdir)
  manual = make_fake_imagenet(tmpdir, **fake_kwargs)
  data_dir = tmpdir / "tfds"
  builder = tfds.builder("imagenet2012", data_dir=str(data_dir), file_format=file_format)
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual), download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    )
  )
  return data_dir
