"""ADM evaluator `.npz` batches: writing sample batches and reading reference batches.

A sample batch is an uncompressed `.npz` whose `arr_0` is uint8 NHWC (optionally `arr_1`: class
labels), exactly what guided-diffusion's `evaluations/evaluator.py` reads. A reference batch
(`VIRTUAL_imagenet256_labeled.npz`) also holds precomputed `mu`, `sigma` (pool_3, 2048) and
`mu_s`, `sigma_s` (spatial, 2023). Images are streamed from the zip member, never loaded whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator

import numpy as np
from etils import epath

from softvq_jax.utils.files import atomic_open
from softvq_jax.utils.paths import is_uri

ARR_KEY = "arr_0"
LABEL_KEY = "arr_1"
STAT_KEYS = ("mu", "sigma", "mu_s", "sigma_s")
POOL_DIM = 2048
SPATIAL_DIM = 2023


class AdmNpzError(ValueError):
  """An ADM `.npz` is missing, malformed or inconsistent; the message names the file."""


def _check_images(images: np.ndarray, what: str) -> np.ndarray:
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise AdmNpzError(f"{what}: images must be uint8 in [0, 255], got dtype {images.dtype}")
  if images.ndim != 4 or images.shape[-1] != 3:
    raise AdmNpzError(f"{what}: images must be NHWC with 3 channels, got shape {images.shape}")
  return images


def _check_labels(labels, n: int, what: str) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
    raise AdmNpzError(f"{what}: labels must be {n} integers, got {labels.dtype} {labels.shape}")
  return labels.astype(np.int64)


class SampleNpzWriter:
  """Streams uint8 NHWC batches into an ADM sample `.npz` (`arr_0`, optional `arr_1` labels).

  The file appears atomically at `close()` and only if exactly `num_samples` images were
  written; a failure leaves no file. Local paths: a temporary file in the same folder, renamed
  (utils.files.atomic_open); `gs://`: the zip needs a seekable file, so it is built in a local
  scratch file and uploaded at `close()`.
  """

  def __init__(
    self,
    path: str | os.PathLike,
    num_samples: int,
    image_shape: tuple[int, int, int],
    with_labels: bool = False,
  ):
    self.path = epath.Path(path)
    if self.path.suffix != ".npz":
      raise AdmNpzError(f"{self.path}: sample batches must be written to a .npz file")
    if len(image_shape) != 3 or image_shape[-1] != 3:
      raise AdmNpzError(f"{self.path}: image_shape must be (H, W, 3), got {image_shape}")
    self.num_samples = int(num_samples)
    self.image_shape = tuple(int(s) for s in image_shape)
    self.with_labels = with_labels
    self.count = 0
    self._labels: list[np.ndarray] = []
    self._stack = contextlib.ExitStack()
    self._scratch: str | None = None
    if is_uri(path):
      fd, self._scratch = tempfile.mkstemp(prefix="softvq_npz_", suffix=".npz")  # local scratch
      self._file = self._stack.enter_context(os.fdopen(fd, "w+b"))
    else:
      self._file = self._stack.enter_context(atomic_open(self.path))
    self._zip = zipfile.ZipFile(self._file, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
    self._member = self._zip.open(f"{ARR_KEY}.npy", "w", force_zip64=True)
    header = {
      "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
      "fortran_order": False,
      "shape": (self.num_samples, *self.image_shape),
    }
    np.lib.format.write_array_header_1_0(self._member, header)

  def write(self, images: np.ndarray, labels: np.ndarray | None = None) -> None:
    """Appends a (b, H, W, 3) uint8 batch (and its b labels when `with_labels`)."""
    images = _check_images(images, str(self.path))
    if images.shape[1:] != self.image_shape:
      raise AdmNpzError(f"{self.path}: batch images {images.shape[1:]} != {self.image_shape}")
    if self.count + len(images) > self.num_samples:
      raise AdmNpzError(f"{self.path}: more than num_samples={self.num_samples} images written")
    if self.with_labels:
      if labels is None:
        raise AdmNpzError(f"{self.path}: labels are required (with_labels=True)")
      self._labels.append(_check_labels(labels, len(images), str(self.path)))
    elif labels is not None:
      raise AdmNpzError(f"{self.path}: labels given but the writer has with_labels=False")
    self._member.write(np.ascontiguousarray(images).tobytes())
    self.count += len(images)

  def close(self) -> epath.Path:
    """Finishes the file; raises (and removes the partial file) if images are missing."""
    try:
      self._member.close()
      if self.count != self.num_samples:
        raise AdmNpzError(f"{self.path}: {self.count} images written, expected {self.num_samples}")
      if self.with_labels:
        with self._zip.open(f"{LABEL_KEY}.npy", "w", force_zip64=True) as f:
          np.lib.format.write_array(f, np.concatenate(self._labels), allow_pickle=False)
      self._zip.close()
      if self._scratch is not None:
        self._file.seek(0)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("wb") as out:
          shutil.copyfileobj(self._file, out, 64 << 20)
      self._stack.close()  # local: the rename into place
    except BaseException:
      self.abort()
      raise
    finally:
      if self._scratch is not None:
        os.unlink(self._scratch)
        self._scratch = None
    return self.path

  def abort(self) -> None:
    """Drops the partial file."""
    try:
      self._member.close()
      self._zip.close()
    except Exception:
      pass
    err = AdmNpzError(f"{self.path}: writing aborted")
    self._stack.__exit__(AdmNpzError, err, None)  # drops atomic_open's temporary file
    if self._scratch is not None:
      os.unlink(self._scratch)
      self._scratch = None

  def __enter__(self) -> SampleNpzWriter:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()


def save_samples_npz(
  path: str | os.PathLike, images: np.ndarray, labels: np.ndarray | None = None
) -> epath.Path:
  """Writes uint8 NHWC `images` as an ADM sample batch (`arr_0`; `arr_1` = labels), atomically."""
  images = _check_images(images, str(path))
  with SampleNpzWriter(path, len(images), images.shape[1:], labels is not None) as w:
    w.write(images, labels)
  return epath.Path(path)


# ----------------------------------------------------------------------------------------------
# Reading


@contextlib.contextmanager
def _open_zip(path: epath.Path) -> Iterator[zipfile.ZipFile]:
  """The .npz as a zip, read through epath (local or gs://)."""
  if not path.is_file():
    raise AdmNpzError(f"ADM batch {str(path)!r} not found")
  with path.open("rb") as f:
    try:
      zf = zipfile.ZipFile(f, "r")
    except zipfile.BadZipFile as e:
      raise AdmNpzError(f"{path}: not a .npz (zip) file: {e}") from e
    with zf:
      yield zf


@contextlib.contextmanager
def _load(path: epath.Path):
  """np.load of an .npz through epath (np.load on a string would bypass it)."""
  with path.open("rb") as f, np.load(f, allow_pickle=False) as data:
    yield data


def _read_header(f) -> tuple[tuple[int, ...], bool, np.dtype] | None:
  """(shape, fortran_order, dtype) of a .npy stream, or None for header versions other than 1/2."""
  version = np.lib.format.read_magic(f)
  if version == (1, 0):
    return np.lib.format.read_array_header_1_0(f)
  if version == (2, 0):
    return np.lib.format.read_array_header_2_0(f)
  return None


def _keys(zf: zipfile.ZipFile) -> list[str]:
  return [n[: -len(".npy")] for n in zf.namelist() if n.endswith(".npy")]


@contextlib.contextmanager
def _open_member(path: epath.Path, key: str):
  """(stream positioned after the .npy header, header or None) of member `key` of an .npz."""
  with _open_zip(path) as zf:
    if f"{key}.npy" not in zf.namelist():
      raise AdmNpzError(f"{path}: no {key!r} in the npz (has {_keys(zf)})")
    with zf.open(f"{key}.npy") as f:
      yield f, _read_header(f)


def npz_array_info(path: str | os.PathLike, key: str = ARR_KEY) -> tuple[tuple[int, ...], np.dtype]:
  """(shape, dtype) of one array of an `.npz` without reading its data."""
  path = epath.Path(path)
  with _open_member(path, key) as (_, header):
    pass
  if header is None:
    with _load(path) as data:
      arr = data[key]
    return arr.shape, arr.dtype
  return tuple(header[0]), header[2]


def iter_npz_batches(
  path: str | os.PathLike, batch_size: int, start: int = 0, key: str = ARR_KEY
) -> Iterator[np.ndarray]:
  """Yields consecutive row batches of `key` from row `start` on, streaming from the zip."""
  path = epath.Path(path)
  with _open_member(path, key) as (f, header):
    if header is None or header[1] or header[2].hasobject:  # ADM also loads these whole
      with _load(path) as data:
        arr = data[key]
      for i in range(start, len(arr), batch_size):
        yield arr[i : i + batch_size]
      return
    shape, _, dtype = header
    row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    if start:
      f.seek(f.tell() + start * row)
    for i in range(start, shape[0], batch_size):
      n = min(batch_size, shape[0] - i)
      data = f.read(n * row)
      if len(data) != n * row:
        raise AdmNpzError(f"{path}: {key!r} is truncated at row {i}")
      yield np.frombuffer(data, dtype=dtype).reshape(n, *shape[1:])


@dataclasses.dataclass
class ReferenceBatch:
  """An ADM reference batch: image count/shape (streamed on demand) and optional statistics."""

  path: epath.Path
  num_images: int
  image_shape: tuple[int, ...] | None
  mu: np.ndarray | None = None
  sigma: np.ndarray | None = None
  mu_s: np.ndarray | None = None
  sigma_s: np.ndarray | None = None
  images: np.ndarray | None = None  # only with load_images=True

  @property
  def has_statistics(self) -> bool:
    return self.mu is not None

  def iter_images(self, batch_size: int, start: int = 0) -> Iterator[np.ndarray]:
    """Streams the uint8 NHWC reference images in batches."""
    if self.num_images == 0:
      raise AdmNpzError(f"{self.path}: the reference batch holds no images ({ARR_KEY!r})")
    return iter_npz_batches(self.path, batch_size, start)


def load_reference_batch(
  path: str | os.PathLike,
  load_images: bool = False,
  dims: tuple[int, int] | None = (POOL_DIM, SPATIAL_DIM),
) -> ReferenceBatch:
  """Reads an ADM reference batch: statistics when present, image metadata, images on request.

  `mu, sigma, mu_s, sigma_s` must be all present or all absent, with consistent shapes and, unless
  `dims` is None, ADM's dimensions (pool 2048, spatial 2023); `arr_0` must be uint8 NHWC. At least
  one of images and statistics is required.
  """
  path = epath.Path(path)
  with _open_zip(path) as zf:
    keys = _keys(zf)
  present = [k for k in STAT_KEYS if k in keys]
  if present and len(present) != len(STAT_KEYS):
    missing = [k for k in STAT_KEYS if k not in keys]
    raise AdmNpzError(f"{path}: has statistics {present} but lacks {missing}")
  if not present and ARR_KEY not in keys:
    raise AdmNpzError(
      f"{path}: neither images ({ARR_KEY!r}) nor statistics {STAT_KEYS} (has {keys})"
    )

  num, image_shape = 0, None
  if ARR_KEY in keys:
    shape, dtype = npz_array_info(path, ARR_KEY)
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
      raise AdmNpzError(f"{path}: {ARR_KEY!r} must be uint8 NHWC, got {dtype} {shape}")
    num, image_shape = shape[0], tuple(shape[1:])
  ref = ReferenceBatch(path=path, num_images=num, image_shape=image_shape)
  if present:
    with _load(path) as data:
      stats = {k: np.asarray(data[k], dtype=np.float64) for k in STAT_KEYS}
    d, d_s = dims if dims is not None else (len(stats["mu"]), len(stats["mu_s"]))
    expected = {"mu": (d,), "sigma": (d, d), "mu_s": (d_s,), "sigma_s": (d_s, d_s)}
    for k, shape in expected.items():
      if stats[k].shape != shape:
        raise AdmNpzError(f"{path}: {k!r} has shape {stats[k].shape}, expected {shape}")
    ref = dataclasses.replace(ref, **stats)
  if load_images and num:
    with _load(path) as data:
      ref.images = data[ARR_KEY]
  return ref
