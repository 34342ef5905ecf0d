"""Training and evaluation batches over TFDS tfrecord files, local or gs:// (sources/tfrecord.py).

tfrecord files have no random access, so instead of one global permutation (pipeline.py) the
training set is read as K *streams* (data.tfrecord_streams) under the same batch contract:
- epoch e of stream s is the shard files perm_e[s::K] (perm_e: the split's files permuted with
  seed (seed, e)); each file is read whole and its records permuted with seed (seed, e, file);
- step k takes records k*GB/K ... (k+1)*GB/K - 1 of every stream: slot s*GB/K + i of the global
  batch is record i of stream s, augmented like TrainData with the Generator of sample
  g = k*GB + slot (`views.train_view`); process p reads only streams [p*K/P, (p+1)*K/P) and
  so only their files: the global batch never depends on the process count;
- a stream's position is a function of the step (epoch lengths come from dataset_info's shard
  lengths): resuming needs no iterator state and reads one file up to the resume point;
- an undecodable record is replaced by the next decodable record of its stream (at most
  `lookahead` later, 64), skipped and counted like TrainData's.
Files are read on background threads, one file ahead of each stream; JPEGs are decoded on the
`num_workers` threads of `parallel.ParallelBatches`, so batches are bitwise identical for any
worker count. Memory: at most two shard files per local stream (ImageNet's 1024 train shards are
about 140 MB each: ~4.5 GB for 16 streams on one process, divided by the process count).

Evaluation reads the split in file order; process p takes a contiguous block of as many records
as EvalData would give it (`pipeline.local_rows` counts), so `training/eval_batches.py` and the
evaluators' per-process counts hold unchanged; with an image limit (max_eval_images,
--num_images) the subset then depends on the process count, while a sliced data.eval_split
does not.
"""

from __future__ import annotations

import concurrent.futures
import functools
import threading
from collections.abc import Iterator

import numpy as np

from softvq_jax.data import parallel, pipeline, views
from softvq_jax.data.pipeline import BadImage
from softvq_jax.data.skips import SkipCounts, SkipLog
from softvq_jax.data.sources.tfrecord import Cursor, TfrecordSplit
from softvq_jax.utils.errors import UserError

LOOKAHEAD = 64  # default: later records of a stream that may replace an undecodable one
_FILES_SEED, _RECORDS_SEED = 0x7F11E5, 0x7EC0D5


class StreamLayout:
  """Which file and record stream s reads at position q: index arithmetic only, no I/O."""

  def __init__(self, lengths: list[int], streams: int, seed: int):
    if len(lengths) < streams:
      raise UserError(
        f"data.tfrecord_streams={streams} exceeds the {len(lengths)} shard files of the split: "
        "every stream needs a file per epoch; lower it (it must divide the global batch and be "
        "divisible by the process count)"
      )
    self.lengths, self.streams, self.seed = np.asarray(lengths, np.int64), streams, seed
    self._lock = threading.RLock()
    self._perms: dict[int, np.ndarray] = {}
    self._starts: dict[int, list[int]] = {}  # stream -> first position of epochs 0, 1, ...

  def files(self, epoch: int, s: int) -> np.ndarray:
    """The shard files of stream s in epoch `epoch`, in reading order."""
    with self._lock:
      if epoch not in self._perms:
        if len(self._perms) > 8:
          self._perms.clear()
        rng = np.random.default_rng([self.seed, _FILES_SEED, epoch])
        self._perms[epoch] = rng.permutation(len(self.lengths))
      return self._perms[epoch][s :: self.streams]

  def order(self, epoch: int, shard: int) -> np.ndarray:
    """The order in which a file's records are read in `epoch`."""
    rng = np.random.default_rng([self.seed, _RECORDS_SEED, epoch, shard])
    return rng.permutation(int(self.lengths[shard]))

  def locate(self, s: int, q: int) -> tuple[int, int, int]:
    """(epoch, file number in the epoch, that file's first position) of position q of stream s."""
    with self._lock:
      starts = self._starts.setdefault(s, [0])
      while starts[-1] <= q:
        starts.append(starts[-1] + int(self.lengths[self.files(len(starts) - 1, s)].sum()))
      epoch = int(np.searchsorted(starts, q, side="right")) - 1
      first = starts[epoch]
    ends = first + np.cumsum(self.lengths[self.files(epoch, s)])
    i = int(np.searchsorted(ends, q, side="right"))
    return epoch, i, int(ends[i] - self.lengths[self.files(epoch, s)[i]])

  def segments(self, s: int, q: int) -> Iterator[tuple[int, np.ndarray, int]]:
    """(shard, record order, first position) of stream s from the file holding position q on."""
    epoch, i, start = self.locate(s, q)
    while True:
      files = self.files(epoch, s)
      for f in files[i:]:
        yield int(f), self.order(epoch, int(f)), start
        start += int(self.lengths[f])
      epoch, i = epoch + 1, 0


class _Batches(parallel.ParallelBatches):
  """ParallelBatches that also stops the file-reading threads on close."""

  def __init__(self, plan, start, *, io, **kw):
    super().__init__(plan, start, **kw)
    self._io = io

  def close(self) -> None:
    super().close()
    self._io.shutdown(wait=True, cancel_futures=True)


class TfrecordTrainData(SkipCounts):
  """Infinite, shuffled, augmented training batches over tfrecord streams (module docstring)."""

  def __init__(
    self,
    split: TfrecordSplit,
    *,
    image_size: int,
    global_batch: int,
    seed: int,
    streams: int = 16,
    process_index: int = 0,
    process_count: int = 1,
    random_crop: bool = True,
    random_flip: bool = True,
    min_crop_frac: float = 0.8,
    uint8: bool = False,
    jpeg_draft: bool = False,
    exact_resize: bool = False,
    num_workers: int | None = None,
    prefetch: int = 2,
    lookahead: int | None = None,
  ):
    """As TrainData; `streams`: K (data.tfrecord_streams); `lookahead`: how many later records
    of its stream may replace an undecodable one (None: LOOKAHEAD)."""
    if streams < 1 or global_batch % streams or streams % process_count:
      raise UserError(
        f"data.tfrecord_streams={streams} must divide the global batch ({global_batch}) and be "
        f"divisible by the process count ({process_count})"
      )
    self.split, self.image_size, self.seed = split, image_size, seed
    self.global_batch, self.streams = global_batch, streams
    self.local_batch, self.per_stream = global_batch // process_count, global_batch // streams
    self.process_index = process_index
    per_process = streams // process_count
    self.local_streams = list(range(process_index * per_process, (process_index + 1) * per_process))
    self.view = dict(
      seed=seed,
      image_size=image_size,
      random_crop=random_crop,
      random_flip=random_flip,
      min_crop_frac=min_crop_frac,
      exact_resize=exact_resize,
    )
    self.uint8, self.jpeg_draft = uint8, jpeg_draft
    self.lookahead = LOOKAHEAD if lookahead is None else lookahead
    self.num_workers, self.prefetch = parallel.resolve_workers(num_workers), prefetch
    if len(split) == 0:
      raise ValueError("the training dataset is empty")
    self.layout = StreamLayout(split.lengths, streams, seed)
    self._skips = SkipLog("training record")
    self._samples = 0

  @property
  def num_examples(self) -> int:
    return len(self.split)

  @property
  def location(self) -> str:
    return self.split.location

  def read_counts(self) -> dict[str, int]:
    """What this process has read: samples, its slots of the global batch (as TrainData's),
    streams, shard files opened and records read."""
    n = self.per_stream
    return {
      "samples": self._samples,
      "slot_min": self.local_streams[0] * n if self._samples else self.global_batch,
      "slot_max": (self.local_streams[-1] + 1) * n - 1 if self._samples else -1,
      "streams": len(self.local_streams),
      "files_opened": len(self.split.files_opened),
      "records_read": self.split.records_read,
    }

  def check_decodable(self) -> None:
    """Refuses (UserError) a dataset whose first records do not decode, before any model."""
    epoch_files = self.layout.files(0, self.local_streams[0])
    shard = int(epoch_files[0])
    for i, record in enumerate(self.split.read(shard, limit=self.lookahead + 1)):
      try:
        self.split.decode(record, self.split.record_name((shard, i)))
        return
      except BadImage as e:
        error = e
    raise UserError(
      f"no decodable image in the training data ({self.location}): the first records of "
      f"{self.split.shards[shard].path} fail to decode (e.g. {error}). Fix or replace the files."
    )

  def _first_decodable(self, chunk: list, i: int, short: int):
    """The record at chunk[i], or the next decodable one of the stream after it."""
    for record, key in chunk[i : i + self.lookahead + 1]:
      if self._skips.is_bad(key):
        self._skips.skip()
        continue
      try:
        draft = short if self.jpeg_draft else None
        return self.split.decode(record, self.split.record_name(key), draft)
      except BadImage as e:
        self._skips.record(key, e)
    raise UserError(
      f"{self.lookahead + 1} consecutive undecodable records from "
      f"{self.split.record_name(chunk[i][1])} on ({self.location}); fix or replace the files"
    )

  def _fill(self, images, labels, j: int, g: int, chunk: list, i: int) -> None:
    arr, labels[j] = views.train_view(
      g, lambda short: self._first_decodable(chunk, i, short), **self.view
    )
    views.write_row(images, j, arr)

  def _planner(self, start_step: int, io):
    """plan(step) for steps start_step, start_step + 1, ... (sequential: it advances streams)."""
    n = self.per_stream
    cursors = [
      (s, Cursor(self.split, self.layout.segments(s, start_step * n), io))
      for s in self.local_streams
    ]
    expected = [start_step]

    def plan(step: int) -> parallel.Pending:
      if step != expected[0]:
        raise RuntimeError(f"tfrecord streams are sequential: step {step}, expected {expected[0]}")
      expected[0] += 1
      s_ = self.image_size
      images = np.empty((self.local_batch, s_, s_, 3), np.uint8 if self.uint8 else np.float32)
      labels = np.empty(self.local_batch, np.int32)
      tasks = []
      for k, (s, cursor) in enumerate(cursors):
        chunk = cursor.get(step * n, n + self.lookahead)
        for i in range(n):
          g = step * self.global_batch + s * n + i
          tasks.append(functools.partial(self._fill, images, labels, k * n + i, g, chunk, i))
      self._samples += self.local_batch
      return parallel.Pending({"image": images, "label": labels}, tasks)

    return plan

  def _io(self):
    return concurrent.futures.ThreadPoolExecutor(len(self.local_streams), "softvq_tfrecord")

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's part of the global batch of `step`, built on the calling thread."""
    io = self._io()
    try:
      return parallel.run_serially(self._planner(step, io)(step))
    finally:
      io.shutdown(wait=True, cancel_futures=True)

  def iterator(self, start_step: int = 0) -> parallel.ParallelBatches:
    """Batches of steps start_step, start_step + 1, ...; reads one file per stream to resume."""
    io = self._io()
    depth = parallel.batch_depth(self.prefetch, self.num_workers, self.local_batch)
    plan = self._planner(start_step, io)
    return _Batches(plan, start_step, io=io, depth=depth, workers=self.num_workers)


def _block(n: int, process_index: int, process_count: int, batch_size: int) -> tuple[int, int]:
  """[start, end) of this process's contiguous block, as large as its share in EvalData."""
  sizes = [len(pipeline.local_rows(n, batch_size, p, process_count)) for p in range(process_count)]
  start = sum(sizes[:process_index])
  return start, start + sizes[process_index]


class TfrecordEvalData(pipeline.EvalData):
  """EvalData over a tfrecord split: this process reads only its block's files, in order.

  Same batches as EvalData (keys, padding, mask, dropped undecodable images); one iterator at
  a time.
  """

  @staticmethod
  def _local_items(items: list, process_index: int, process_count: int, batch_size: int) -> list:
    start, end = _block(len(items), process_index, process_count, batch_size)
    return items[start:end]

  def _segments(self) -> Iterator[tuple[int, None, int]]:
    """The files holding this process's records: (shard, None, first record index)."""
    if not self._items:
      return
    first, last = self._items[0][0], self._items[-1][0]
    start = 0
    for shard, length in enumerate(self.source.lengths):
      if start <= last and start + length > first:
        yield shard, None, start
      start += length

  def _decode(self, records: dict, index: int):
    record, key = records[index]
    return self.source.decode(record, self.source.record_name(key))

  def _plan(self, b: int) -> parallel.Pending:
    chunk = self._items[b * self.batch_size : (b + 1) * self.batch_size]
    first = chunk[0][0]
    got = self._cursor.get(first, chunk[-1][0] - first + 1)
    records = {first + k: r for k, r in enumerate(got)}
    load = functools.partial(self._decode, records)
    tasks = [functools.partial(self._example, item, load) for item in chunk]
    return parallel.Pending(None, tasks, finish=self._assemble)

  def iterator(self) -> Iterator[dict[str, np.ndarray]]:
    io = concurrent.futures.ThreadPoolExecutor(1, "softvq_tfrecord_eval")
    self._cursor = Cursor(self.source, self._segments(), io)
    try:
      yield from super().iterator()
    finally:
      io.shutdown(wait=True, cancel_futures=True)
