"""Deterministic, resumable, multi-process batching over random-access image sources.

Contract shared by every dataset (photos, folders, ImageNet, cached latents):
- `TrainData.iterator(start_step)` yields this process's local batches for steps start_step, ...:
  {"image": float32 (B_local, S, S, 3) in [-1, 1], "label": int32 (B_local,)}; with uint8=True
  the images stay uint8 in [0, 255] and `preprocess.float_images` converts them on device.
- The global batch of step k holds global samples k*GB ... k*GB+GB-1; process i takes its
  contiguous slice, so the global batch is identical for any number of processes.
- Sample g is example `perm_e[g % n]` of epoch e = g // n (a permutation seeded by (seed, e)),
  augmented with a Generator seeded by (seed, g). A batch is therefore a pure function of
  (seed, step): resuming at step k reproduces exactly what an uninterrupted run sees (no
  iterator state needs checkpointing).
- `EvalData.iterator()` yields fixed-shape batches with a boolean "mask" (False on padding).
- Cached latents (`data/latents/`) yield "latent" float32 (B_local, L, D) instead of "image",
  with the same index arithmetic (`ShuffledBatches`).
Batches are built ahead of time with per-example parallelism (`parallel.ParallelBatches`): the
examples of a batch are decoded, cropped and flipped on all `num_workers` threads (PIL's decode
and resize release the GIL) and batches are handed out in step order, `prefetch` ahead, so a batch
never depends on the worker count or on timing.

Undecodable examples (`BadImage`) are logged once per example per run and counted
(`TrainData.num_skipped`, `EvalData.num_skipped`, thread-safe); `TrainData.check_decodable`
refuses a dataset with no decodable example before anything else is built.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np
from PIL import Image

from softvq_jax.data import parallel, preprocess
from softvq_jax.data.skips import SkipCounts, SkipLog
from softvq_jax.data.views import train_view, write_row
from softvq_jax.utils.errors import UserError


class BadImage(Exception):
  """An example that cannot be decoded; the pipeline skips it and counts it."""


class ImageSource(Protocol):
  """Random access to (PIL image, label) by index; raises BadImage for undecodable examples.

  Sources that decode files may accept `load(index, draft=short)`: decode a JPEG at reduced
  size for an ADM resize to `short` (`preprocess.draft_jpeg`; used only with data.jpeg_draft).
  An optional `location` attribute (e.g. "data.path='/x'") names the data in error messages.
  """

  def __len__(self) -> int: ...

  def load(self, index: int) -> tuple[Image.Image, int]: ...


def load_example(source, index: int, draft: int | None = None):
  """source.load(index), asking for a reduced-size JPEG decode when `draft` (a short side)."""
  if draft:
    return source.load(index, draft=draft)
  return source.load(index)


# A "view" maps (source image, Generator) -> uint8 (S, S, 3).
View = Callable[[Image.Image, np.random.Generator], np.ndarray]


def local_rows(n: int, local_batch: int, process_index: int, process_count: int) -> np.ndarray:
  """Items [0, n) in global batches of local_batch * process_count: this process's contiguous
  rows of each, so the global batches (their rows and order) never depend on the process count."""
  i = np.arange(n)
  return i[(i % (local_batch * process_count)) // local_batch == process_index]


class ShuffledBatches:
  """The contract's index arithmetic, shared by image and latent training data.

  Global sample g is example `order(g // n)[g % n]`; the global batch of step k holds samples
  k*GB ... k*GB+GB-1 and this process takes its contiguous slice. Subclasses define `plan(step)`.
  """

  def __init__(
    self,
    num_examples: int,
    *,
    global_batch: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    num_workers: int | None = None,
    prefetch: int = 2,
  ):
    """num_workers: decode threads (None / 0 = this process's cores); prefetch: batches ahead."""
    if num_examples == 0:
      raise ValueError("the training dataset is empty")
    if global_batch % process_count:
      raise ValueError(f"global batch {global_batch} not divisible by {process_count} processes")
    self._num_examples = num_examples
    self.global_batch = global_batch
    self.local_batch = global_batch // process_count
    self.seed = seed
    self.process_index = process_index
    self.num_workers, self.prefetch = parallel.resolve_workers(num_workers), prefetch
    self._lock = threading.Lock()
    self._perm_cache: dict[int, np.ndarray] = {}
    self._read = {"samples": 0, "slot_min": global_batch, "slot_max": -1}

  num_skipped = 0  # undecodable examples replaced; image pipelines count them (TrainData)

  @property
  def num_examples(self) -> int:
    return self._num_examples

  def _order(self, epoch: int) -> np.ndarray:
    with self._lock:
      if epoch not in self._perm_cache:
        if len(self._perm_cache) > 4:
          self._perm_cache.clear()
        rng = np.random.default_rng([self.seed, 0x5EED, epoch])
        self._perm_cache[epoch] = rng.permutation(self._num_examples)
      return self._perm_cache[epoch]

  def local_samples(self, step: int) -> np.ndarray:
    """Global sample indices (int64, (B_local,)) of this process's part of step `step` (the
    examples this process reads for it: counted in `read_counts`)."""
    first = step * self.global_batch + self.process_index * self.local_batch
    samples = np.arange(first, first + self.local_batch, dtype=np.int64)
    slots = samples % self.global_batch
    with self._lock:
      self._read["samples"] += len(samples)
      self._read["slot_min"] = min(self._read["slot_min"], int(slots.min()))
      self._read["slot_max"] = max(self._read["slot_max"], int(slots.max()))
    return samples

  def read_counts(self) -> dict[str, int]:
    """What this process has read: {"samples": n, "slot_min", "slot_max"}, the slots being
    positions in the global batch (this process's are [i * B_local, (i + 1) * B_local))."""
    with self._lock:
      return dict(self._read)

  def example_indices(self, samples: np.ndarray) -> np.ndarray:
    """Global sample indices -> example indices under the per-epoch permutations."""
    epochs, pos = np.divmod(np.asarray(samples, np.int64), self._num_examples)
    out = np.empty(len(pos), np.int64)
    for e in np.unique(epochs):
      sel = epochs == e
      out[sel] = self._order(int(e))[pos[sel]]
    return out

  def plan(self, step: int) -> parallel.Pending:
    """The batch of `step` as independent tasks (see parallel.py); defined by subclasses."""
    raise NotImplementedError

  def tasks_per_batch(self) -> int:
    return self.local_batch

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's part of the global batch of `step`, built on the calling thread."""
    return parallel.run_serially(self.plan(step))

  def iterator(self, start_step: int = 0) -> parallel.ParallelBatches:
    """Batches of steps start_step, start_step + 1, ... (the examples spread over the workers)."""
    depth = parallel.batch_depth(self.prefetch, self.num_workers, self.tasks_per_batch())
    return parallel.ParallelBatches(self.plan, start_step, depth=depth, workers=self.num_workers)


class TrainData(SkipCounts, ShuffledBatches):
  """Infinite, shuffled, augmented batches over an ImageSource (see module docstring)."""

  def __init__(
    self,
    source: ImageSource,
    *,
    image_size: int,
    random_crop: bool = True,
    random_flip: bool = True,
    min_crop_frac: float = 0.8,
    uint8: bool = False,
    jpeg_draft: bool = False,
    exact_resize: bool = False,
    **batching,
  ):
    """`batching`: global_batch, seed, process_index/count, num_workers, prefetch (as the base).

    jpeg_draft: decode JPEGs at reduced size where the ADM resize halves them anyway (faster on
    large photos, not bitwise equal to the full decode; `preprocess.draft_jpeg`).
    exact_resize: resize whole images before cropping (bitwise the reference's ADM crop); False
    resizes only the crop's window (`views.train_view`).
    """
    super().__init__(len(source), **batching)
    self.source = source
    self.image_size = image_size
    self.random_crop, self.random_flip = random_crop, random_flip
    self.min_crop_frac = min_crop_frac
    self.uint8 = uint8  # ship uint8 images; preprocess.float_images converts them on device
    self.jpeg_draft, self.exact_resize = jpeg_draft, exact_resize
    self._skips = SkipLog("training example")

  @property
  def location(self) -> str:
    return getattr(self.source, "location", "") or type(self.source).__name__

  def _load(self, index: int, short: int):
    return load_example(self.source, index, short if self.jpeg_draft else None)

  def _first_decodable(self, order: np.ndarray, pos: int, short: int):
    """The example at `pos` of the epoch's order, or the next decodable one after it."""
    n = len(order)
    for attempt in range(n):
      index = int(order[(pos + attempt) % n])
      if self._skips.is_bad(index):  # decoded once per run; still a skip
        self._skips.skip()
        continue
      try:
        return self._load(index, short)
      except BadImage as e:
        self._skips.record(index, e)
    raise self._all_bad_error()

  def _all_bad_error(self) -> UserError:
    bad = self._skips.bad
    first = next(iter(bad.values()), "")
    return UserError(
      f"no decodable image in the training data ({self.location}): all {self.num_examples} "
      f"examples fail to decode (e.g. {first}). Fix or replace the files, or point the config at "
      "another dataset."
    )

  def check_decodable(self) -> int:
    """Decodes examples (in epoch 0's order) until one works and returns its index.

    Called by `data.build_train_data`, before the model is built: a dataset where nothing
    decodes raises UserError naming its location (data.path / data.data_dir) at once.
    """
    for index in self._order(0):
      index = int(index)
      if self._skips.is_bad(index):
        continue
      try:
        self._load(index, self.image_size)
        return index
      except BadImage as e:
        self._skips.record(index, e, skipped=0)
    raise self._all_bad_error()

  def sample(self, g: int) -> tuple[np.ndarray, int]:
    """Global sample g -> (uint8 (S, S, 3), label); a bad example is replaced by the next one.

    Random draws, in order: the crop's short side, its position, the flip (all from the
    Generator seeded by (seed, g)), so the value never depends on which example was decoded
    first or on which thread.
    """
    epoch, pos = divmod(g, self.num_examples)
    order = self._order(epoch)
    return train_view(
      g,
      lambda short: self._first_decodable(order, pos, short),
      seed=self.seed,
      image_size=self.image_size,
      random_crop=self.random_crop,
      random_flip=self.random_flip,
      min_crop_frac=self.min_crop_frac,
      exact_resize=self.exact_resize,
    )

  def _fill(self, images: np.ndarray, labels: np.ndarray, j: int, g: int) -> None:
    arr, labels[j] = self.sample(g)
    write_row(images, j, arr)

  def plan(self, step: int) -> parallel.Pending:
    """One task per example of this process's part of step `step`, writing its row."""
    samples = self.local_samples(step)
    s = self.image_size
    images = np.empty((len(samples), s, s, 3), np.uint8 if self.uint8 else np.float32)
    labels = np.empty(len(samples), np.int32)
    fill = self._fill
    tasks = [functools.partial(fill, images, labels, j, int(g)) for j, g in enumerate(samples)]
    return parallel.Pending({"image": images, "label": labels}, tasks)


class EvalData:
  """A finite evaluation set: each source image under each view, padded fixed-shape batches.

  Examples are decoded on `num_workers` threads (`prefetch` batches ahead) and batched in item
  order, so the batches are the same for any worker count. Evaluation always decodes at full
  size (no JPEG draft): metrics stay comparable with the reference. An undecodable image is
  dropped from every pass (warned about once); `num_skipped` counts the dropped items.
  """

  def __init__(
    self,
    source: ImageSource,
    views: list[View],
    *,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    num_workers: int | None = None,
    prefetch: int = 2,
    image_size: int | None = None,
  ):
    """image_size: the views' output size (for `empty_batch`)."""
    if len(source) == 0:
      raise ValueError("the evaluation dataset is empty")
    self.source, self.views, self.batch_size = source, views, batch_size
    self.image_size = image_size
    items = [(i, v) for i in range(len(source)) for v in range(len(views))]
    self._items = self._local_items(items, process_index, process_count, batch_size)
    self.num_examples = len(items)
    self.num_workers, self.prefetch = parallel.resolve_workers(num_workers), prefetch
    self._skips = SkipLog("evaluation example")
    self._dropped: set = set()
    self._lock = threading.Lock()

  @property
  def num_skipped(self) -> int:
    """(image, view) items of this process dropped from each pass (undecodable images)."""
    return len(self._dropped)

  def empty_batch(self) -> dict[str, np.ndarray]:
    """A batch of padding only (mask all False): what a process without items feeds so that
    every process runs the same evaluation steps."""
    if self.image_size is None:
      raise ValueError("EvalData(image_size=...) is needed for an empty batch")
    s = self.image_size
    return {
      "image": np.zeros((self.batch_size, s, s, 3), np.float32),
      "label": np.zeros(self.batch_size, np.int32),
      "mask": np.zeros(self.batch_size, bool),
    }

  @staticmethod
  def _local_items(items: list, process_index: int, process_count: int, batch_size: int) -> list:
    """This process's rows of every global batch (a streamed reader takes a block)."""
    return [items[i] for i in local_rows(len(items), batch_size, process_index, process_count)]

  def _example(self, item: tuple[int, int], load=None):
    """(float32 (S, S, 3), label) of one item, or None when its image is undecodable.

    load(index) -> (image, label): default source.load (a streamed reader passes its bytes).
    """
    index, view = item
    try:
      if self._skips.is_bad(index):
        raise BadImage(self._skips.bad.get(index, ""))
      image, label = (load or self.source.load)(index)
    except BadImage as e:
      self._skips.record(index, e, skipped=0)
      with self._lock:
        self._dropped.add(item)
      return None
    arr = self.views[view](image, np.random.default_rng([0xE7A1, index, view]))
    return preprocess.to_float(arr), label

  def _assemble(self, _, examples: list):
    examples = [e for e in examples if e is not None]
    if not examples:
      return None
    pad = self.batch_size - len(examples)
    images = np.stack([e[0] for e in examples] + [np.zeros_like(examples[0][0])] * pad)
    return {
      "image": images,
      "label": np.asarray([e[1] for e in examples] + [0] * pad, np.int32),
      "mask": np.asarray([True] * len(examples) + [False] * pad),
    }

  def _plan(self, b: int) -> parallel.Pending:
    chunk = self._items[b * self.batch_size : (b + 1) * self.batch_size]
    tasks = [functools.partial(self._example, item) for item in chunk]
    return parallel.Pending(None, tasks, finish=self._assemble)

  def iterator(self) -> Iterator[dict[str, np.ndarray]]:
    """The padded batches of this process's items (a batch of only bad images is left out)."""
    num_batches = -(-len(self._items) // self.batch_size)
    depth = parallel.batch_depth(self.prefetch, self.num_workers, self.batch_size)
    it = parallel.ParallelBatches(
      self._plan, 0, depth=depth, workers=self.num_workers, stop=num_batches
    )
    try:
      for batch in it:
        if batch is not None:
          yield batch
    finally:
      it.close()


def eval_views(image_size: int, num_views: int) -> list[View]:
  """View 0: ADM center crop; views 1..: fixed ADM random crops (seeded per image and view)."""
  views: list[View] = [lambda im, rng: preprocess.center_crop_arr(im, image_size)]
  for _ in range(max(0, num_views - 1)):
    views.append(lambda im, rng: preprocess.random_crop_arr(im, image_size, rng))
  return views
