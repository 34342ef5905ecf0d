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
Batches are built ahead of time by a small thread pool (PIL decoding/resizing releases the GIL).
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np
from absl import logging
from PIL import Image

from softvq_jax.data import preprocess


class BadImage(Exception):
  """An example that cannot be decoded; the pipeline skips it and counts it."""


class ImageSource(Protocol):
  """Random access to (PIL image, label) by index; raises BadImage for undecodable examples."""

  def __len__(self) -> int: ...

  def load(self, index: int) -> tuple[Image.Image, int]: ...


# A "view" maps (source image, Generator) -> uint8 (S, S, 3).
View = Callable[[Image.Image, np.random.Generator], np.ndarray]


class PrefetchIterator:
  """Yields fn(step) for consecutive steps, computing `depth` steps ahead on a thread pool."""

  def __init__(self, fn: Callable[[int], dict], start_step: int, depth: int, workers: int):
    self._fn, self._next, self._depth = fn, start_step, max(1, depth)
    self._pool = concurrent.futures.ThreadPoolExecutor(max(1, workers), "softvq_data")
    self._queue: collections.deque = collections.deque()
    self._closed = False

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self._closed:
      raise StopIteration
    while len(self._queue) < self._depth:
      self._queue.append(self._pool.submit(self._fn, self._next))
      self._next += 1
    return self._queue.popleft().result()

  def close(self) -> None:
    self._closed = True
    for f in self._queue:
      f.cancel()
    self._queue.clear()
    self._pool.shutdown(wait=True, cancel_futures=True)

  def __del__(self):
    if not self._closed:
      self._pool.shutdown(wait=False, cancel_futures=True)


class ShuffledBatches:
  """The contract's index arithmetic, shared by image and latent training data.

  Global sample g is example `order(g // n)[g % n]`; the global batch of step k holds samples
  k*GB ... k*GB+GB-1 and this process takes its contiguous slice. Subclasses define `batch(step)`.
  """

  def __init__(
    self,
    num_examples: int,
    *,
    global_batch: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    num_workers: int = 4,
    prefetch: int = 2,
  ):
    if num_examples == 0:
      raise ValueError("the training dataset is empty")
    if global_batch % process_count:
      raise ValueError(f"global batch {global_batch} not divisible by {process_count} processes")
    self._num_examples = num_examples
    self.global_batch = global_batch
    self.local_batch = global_batch // process_count
    self.seed = seed
    self.process_index = process_index
    self.num_workers, self.prefetch = num_workers, prefetch
    self._lock = threading.Lock()
    self._perm_cache: dict[int, np.ndarray] = {}

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
    """Global sample indices (int64, (B_local,)) of this process's part of step `step`."""
    first = step * self.global_batch + self.process_index * self.local_batch
    return np.arange(first, first + self.local_batch, dtype=np.int64)

  def example_indices(self, samples: np.ndarray) -> np.ndarray:
    """Global sample indices -> example indices under the per-epoch permutations."""
    epochs, pos = np.divmod(np.asarray(samples, np.int64), self._num_examples)
    out = np.empty(len(pos), np.int64)
    for e in np.unique(epochs):
      sel = epochs == e
      out[sel] = self._order(int(e))[pos[sel]]
    return out

  def batch(self, step: int) -> dict[str, np.ndarray]:
    raise NotImplementedError

  def iterator(self, start_step: int = 0) -> PrefetchIterator:
    return PrefetchIterator(self.batch, start_step, self.prefetch, self.num_workers)


class TrainData(ShuffledBatches):
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
    **batching,
  ):
    """`batching`: global_batch, seed, process_index/count, num_workers, prefetch (as the base)."""
    super().__init__(len(source), **batching)
    self.source = source
    self.image_size = image_size
    self.random_crop, self.random_flip = random_crop, random_flip
    self.min_crop_frac = min_crop_frac
    self.uint8 = uint8  # ship uint8 images; preprocess.float_images converts them on device
    self.num_skipped = 0

  def sample(self, g: int) -> tuple[np.ndarray, int]:
    """Global sample g -> (uint8 (S, S, 3), label); a bad example is replaced by the next one."""
    n = len(self.source)
    epoch, pos = divmod(g, n)
    order = self._order(epoch)
    rng = np.random.default_rng([self.seed, g])
    for attempt in range(n):
      index = int(order[(pos + attempt) % n])
      try:
        image, label = self.source.load(index)
        break
      except BadImage as e:
        with self._lock:
          self.num_skipped += 1
        logging.warning("skipping undecodable example %d: %s", index, e)
    else:
      raise RuntimeError("no decodable example in the dataset")
    if self.random_crop:
      arr = preprocess.random_crop_arr(image, self.image_size, rng, self.min_crop_frac)
    else:
      arr = preprocess.center_crop_arr(image, self.image_size)
    if self.random_flip and rng.random() < 0.5:
      arr = arr[:, ::-1]
    return arr, label

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's part of the global batch of `step`."""
    samples = [self.sample(int(g)) for g in self.local_samples(step)]
    images = np.stack([s[0] for s in samples])
    return {
      "image": images if self.uint8 else preprocess.to_float(images),
      "label": np.asarray([s[1] for s in samples], np.int32),
    }


class EvalData:
  """A finite evaluation set: each source image under each view, padded fixed-shape batches."""

  def __init__(
    self,
    source: ImageSource,
    views: list[View],
    *,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
  ):
    if len(source) == 0:
      raise ValueError("the evaluation dataset is empty")
    self.source, self.views, self.batch_size = source, views, batch_size
    items = [(i, v) for i in range(len(source)) for v in range(len(views))]
    self._items = items[process_index::process_count]
    self.num_examples = len(items)
    self.num_skipped = 0  # undecodable examples skipped by this process's iterators

  def _example(self, item: tuple[int, int]) -> tuple[np.ndarray, int]:
    index, view = item
    image, label = self.source.load(index)
    return self.views[view](image, np.random.default_rng([0xE7A1, index, view])), label

  def iterator(self) -> Iterator[dict[str, np.ndarray]]:
    for start in range(0, len(self._items), self.batch_size):
      chunk = self._items[start : start + self.batch_size]
      examples = []
      for item in chunk:
        try:
          examples.append(self._example(item))
        except BadImage as e:
          self.num_skipped += 1
          logging.warning("skipping undecodable eval example %s: %s", item, e)
      if not examples:
        continue
      pad = self.batch_size - len(examples)
      images = np.stack([e[0] for e in examples] + [np.zeros_like(examples[0][0])] * pad)
      yield {
        "image": preprocess.to_float(images),
        "label": np.asarray([e[1] for e in examples] + [0] * pad, np.int32),
        "mask": np.asarray([True] * len(examples) + [False] * pad),
      }


def eval_views(image_size: int, num_views: int) -> list[View]:
  """View 0: ADM center crop; views 1..: fixed ADM random crops (seeded per image and view)."""
  views: list[View] = [lambda im, rng: preprocess.center_crop_arr(im, image_size)]
  for _ in range(max(0, num_views - 1)):
    views.append(lambda im, rng: preprocess.random_crop_arr(im, image_size, rng))
  return views
