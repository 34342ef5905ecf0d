"""TFDS datasets prepared as tfrecord (local or gs://): shard files read in order with tf.data.

`TfrecordSplit` finds a split's files and their record counts in the builder's dataset_info (file
instructions, so slices such as train[:10%] work) without touching the files, reads one file
whole (`read`, counted in `files_opened` / `records_read`) and decodes a record (`decode`:
tf.train.Example -> PIL image, label; BadImage when undecodable). `Cursor` serves the records of
a sequence of files in order, reading one file ahead on a background thread. The batches built
on them (training streams, evaluation blocks) are in data/streams.py.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import threading
from collections.abc import Iterator

import numpy as np
from absl import logging
from PIL import Image

from softvq_jax.data.pipeline import BadImage
from softvq_jax.data.sources import imagenet
from softvq_jax.data.sources.decode import decode_image
from softvq_jax.utils.errors import UserError

FORMAT = "tfrecord"


@dataclasses.dataclass(frozen=True)
class Shard:
  """One file of a split: records skip ... skip + take - 1 of it (TFDS file instructions)."""

  path: str
  skip: int
  take: int


class TfrecordSplit:
  """One split of a prepared TFDS image dataset, as tfrecord shard files read with tf.data.

  Counts what this process opened (`files_opened`, `records_read`): the per-process shards are
  checked on these.
  """

  def __init__(
    self,
    name: str = imagenet.DEFAULT_NAME,
    split: str = "train",
    data_dir: str = "",
    manual_dir: str = "",
    process_count: int = 1,
    image_key: str = "image",
    label_key: str = "label",
  ):
    self.name, self.split, self.data_dir, self.manual_dir = name, split, data_dir, manual_dir
    self.process_count, self.image_key, self.label_key = process_count, image_key, label_key
    self._lock = threading.Lock()
    self.files_opened: list[str] = []
    self.records_read = 0

  @functools.cached_property
  def builder(self):
    builder = imagenet.load_builder(self.name, self.data_dir, self.manual_dir, self.process_count)
    formats = imagenet.stored_formats(builder)
    if FORMAT not in formats:
      raise imagenet.DatasetNotReady(
        f"data.reader='tfrecord': TFDS dataset {builder.info.full_name!r} at {builder.data_dir} "
        f"is stored as {sorted(formats)}, not tfrecord; use data.reader=auto (or array_record)."
      )
    if imagenet.format_name(builder.info.file_format) != FORMAT:  # several formats on disk
      builder.info.set_file_format(FORMAT, override=True, override_if_initialized=True)
    return builder

  @functools.cached_property
  def shards(self) -> list[Shard]:
    """The split's files in TFDS order (slices such as train[:10%] cut the first and last)."""
    info = self.builder.info
    imagenet.check_split(self.builder, self.name, self.split)
    out = [Shard(str(f.filename), int(f.skip), int(f.take)) for f in self._instructions(info)]
    return [s for s in out if s.take > 0]

  def _instructions(self, info):
    try:
      return info.splits[self.split].file_instructions
    except (KeyError, ValueError, AssertionError) as e:  # a bad slice, e.g. train[:200%]
      raise UserError(f"split {self.split!r} of {self.name!r}: {e}") from e

  @property
  def lengths(self) -> list[int]:
    return [s.take for s in self.shards]

  def __len__(self) -> int:
    return sum(self.lengths)

  @property
  def num_classes(self) -> int:
    return self.builder.info.features[self.label_key].num_classes

  @property
  def location(self) -> str:
    return f"data.data_dir={self.data_dir!r}, TFDS {self.name!r} split {self.split!r} (tfrecord)"

  def read(self, index: int, limit: int | None = None) -> np.ndarray:
    """The serialized records (object array, `take` long) of shard `index`, via tf.data.

    A file cut short (DataLossError) is padded with empty records, which fail to decode and
    are skipped: positions, and so every later batch, stay as dataset_info says.
    """
    import tensorflow as tf

    shard = self.shards[index]
    n = shard.take if limit is None else min(limit, shard.take)
    with self._lock:
      self.files_opened.append(shard.path)
    out, got = np.full(n, b"", dtype=object), 0
    ds = tf.data.TFRecordDataset(shard.path, buffer_size=16 << 20).skip(shard.skip).take(n)
    try:
      for chunk in ds.batch(1024).as_numpy_iterator():
        out[got : got + len(chunk)] = list(chunk)
        got += len(chunk)
    except tf.errors.NotFoundError as e:
      raise imagenet.DatasetNotReady(f"cannot open {shard.path} ({self.location}): {e}") from e
    except tf.errors.DataLossError as e:
      logging.warning("%s: damaged after record %d (%s); the rest is skipped", shard.path, got, e)
    if got < n:
      logging.warning("%s: %d of %d records read; the rest is skipped", shard.path, got, n)
    with self._lock:
      self.records_read += got
    return out

  def record_name(self, key: tuple[int, int]) -> str:
    """`file[index]` of a record key (shard, index in the file), for messages."""
    return f"{self.shards[key[0]].path}[{key[1]}]"

  def decode(self, record: bytes, name: str, draft: int | None = None) -> tuple[Image.Image, int]:
    """(image, label) of a serialized tf.train.Example; BadImage when it cannot be decoded."""
    from tensorflow.core.example import example_pb2

    try:
      feature = example_pb2.Example.FromString(record).features.feature
      data = feature[self.image_key].bytes_list.value[0]
      label = int(feature[self.label_key].int64_list.value[0])
      if "file_name" in feature:
        name = feature["file_name"].bytes_list.value[0].decode()
    except Exception as e:  # a damaged record: skipped and counted like an undecodable image
      raise BadImage(f"{name}: {type(e).__name__}: {e}") from e
    return decode_image(data, name, draft), label


class Cursor:
  """Records of a sequence of files, read in order on an `io` thread, one file ahead.

  `segments` yields (shard, order or None, first position) in reading order; `get(q, n)` gives
  the records at positions q ... q + n - 1 (fewer at the end) as (record, key) pairs, key =
  (shard, index in the file); q never goes backwards. At most two files are held: the one being
  read and the next (read ahead, or loaded early when `n` reaches into it).
  """

  def __init__(self, split: TfrecordSplit, segments: Iterator, io):
    self._split, self._segments, self._io = split, segments, io
    self._loaded: collections.deque = collections.deque()  # (start, records, keys, shard)
    self._ahead = self._pull()

  def _pull(self):
    seg = next(self._segments, None)
    if seg is None:
      return None
    return (*seg, self._io.submit(self._split.read, seg[0]))

  def _drop_before(self, q: int) -> None:
    while self._loaded and self._loaded[0][0] + len(self._loaded[0][1]) <= q:
      self._loaded.popleft()

  def get(self, q: int, n: int) -> list[tuple[bytes, tuple[int, int]]]:
    self._drop_before(q)
    while not self._loaded or self._loaded[-1][0] + len(self._loaded[-1][1]) < q + n:
      seg, self._ahead = self._ahead or self._pull(), None
      if seg is None:
        break
      shard, order, start, future = seg
      raw = future.result()
      keys = np.arange(len(raw)) if order is None else order
      self._loaded.append((start, raw[keys], keys, shard))
      self._drop_before(q)
    if self._ahead is None and len(self._loaded) == 1:
      self._ahead = self._pull()  # the next file is read while this one is used
    out = []
    for start, records, keys, shard in self._loaded:
      lo, hi = max(q - start, 0), min(q + n - start, len(records))
      out.extend((records[i], (shard, int(keys[i]))) for i in range(lo, hi))
    return out


def splits(data_cfg, process_count: int = 1) -> tuple[TfrecordSplit, TfrecordSplit]:
  """(train, eval) TfrecordSplits for the `data` config block."""
  return imagenet.split_sources(TfrecordSplit, data_cfg, process_count)
