"""Reading latent caches: random access, training batches and evaluation batches.

`LatentTrainData` follows the TrainData contract (`pipeline.ShuffledBatches`): batches
{"latent": float32 (B_local, L, D) raw z_q, "label": int32 (B_local,)}; sample g picks the flipped
variant when `flip_bits(seed, g)` is set (`LatentTrainData.selection`, shared with the online
encoder in `softvq_jax.training.online_latents`). `LatentEvalData` yields fixed-shape padded
batches with a "mask". Both read whole batches on `num_workers` threads, several batches at once
(array_record reads and numpy casts release the GIL), handed out in order: the values never
depend on the worker count.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator, Sequence

import numpy as np
from etils import epath

from softvq_jax.data import parallel, pipeline
from softvq_jax.data.latents import format as fmt


def flip_bits(seed: int, samples: np.ndarray) -> np.ndarray:
  """Deterministic fair coin per (seed, global sample index): True -> use the flipped latent.

  splitmix64 of the index mixed with the seed (vectorised, no per-sample Generator).
  """
  with np.errstate(over="ignore"):
    x = np.asarray(samples, np.uint64) + np.uint64(0x9E3779B97F4A7C15) * np.uint64(
      (seed * 2 + 1) & 0xFFFFFFFFFFFFFFFF
    )
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
  return (x >> np.uint64(63)).astype(bool)


class LatentSource:
  """Random access to a complete cache: `read(indices, flips)` -> (float32 (n, L, D), labels)."""

  def __init__(self, path: str | os.PathLike):
    from array_record.python.array_record_data_source import ArrayRecordDataSource

    self.info = fmt.cache_info(path)
    root = epath.Path(self.info["path"])  # local or gs:// (ArrayRecord reads both)
    files = [str(root / s["file"]) for s in self.info["shards"]]
    self._ds = ArrayRecordDataSource(files)
    if len(self._ds) != self.info["num_examples"]:
      raise fmt.IncompleteCacheError(
        f"latent cache {root} holds {len(self._ds)} records but {fmt.INFO_FILE} says "
        f"{self.info['num_examples']}; re-create it with --overwrite ({fmt.CACHE_COMMAND})"
      )
    self.num_tokens, self.dim, self.dtype = (
      self.info["num_tokens"],
      self.info["dim"],
      self.info["dtype"],
    )

  def __len__(self) -> int:
    return self.info["num_examples"]

  def _records(self, indices: Sequence[int]) -> list[bytes]:
    return self._ds.__getitems__([int(i) for i in indices])

  def read_both(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Examples -> latents (n, 2, L, D) in the cache dtype (variant 1 = flip), labels (n,)."""
    return fmt.decode_records(self._records(indices), self.num_tokens, self.dim, self.dtype)

  def read(self, indices: Sequence[int], flips: np.ndarray | None = None):
    """Examples -> float32 latents (n, L, D) (flipped variant where `flips`), int32 labels."""
    records = self._records(indices)
    return fmt.decode_variants(records, self.num_tokens, self.dim, self.dtype, flips)


class LatentTrainData(pipeline.ShuffledBatches):
  """TrainData contract over a latent cache: {"latent": float32 (B_local, L, D), "label"}.

  `source` is a LatentSource; a subclass may pass another sized source (the online encoder
  passes its images) and override `batch`, keeping the same `selection`.
  """

  def __init__(self, source, *, random_flip: bool = True, **batching):
    """`batching`: global_batch, seed, process_index/count, num_workers, prefetch (as the base)."""
    super().__init__(len(source), **batching)
    self.source, self.random_flip = source, random_flip
    self.info = getattr(source, "info", None)

  def flips(self, samples: np.ndarray) -> np.ndarray:
    """Per global sample: True -> the flipped variant (`flip_bits`), never without random_flip."""
    if not self.random_flip:
      return np.zeros(len(samples), bool)
    return flip_bits(self.seed, samples)

  def selection(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """(example indices, flips) of this process's samples of step `step`."""
    g = self.local_samples(step)
    return self.example_indices(g), self.flips(g)

  def tasks_per_batch(self) -> int:
    return 1

  def plan(self, step: int) -> parallel.Pending:
    """One read of this process's rows of step `step` (array_record's reads cost ~3 ms a call
    whatever their size, so a batch is not split: consecutive batches run on the workers)."""

    def read():
      latent, label = self.source.read(*self.selection(step))
      return {"latent": latent, "label": label}

    return parallel.Pending(None, [read], finish=lambda _, results: results[0])


def padded_chunks(
  n: int, batch_size: int, process_index: int, process_count: int
) -> list[np.ndarray]:
  """This process's rows of the global eval batches (`pipeline.local_rows`), padded with -1 to the
  same number of batches everywhere."""
  items = pipeline.local_rows(n, batch_size, process_index, process_count)
  per_process = math.ceil(n / process_count)
  num_batches = max(1, math.ceil(per_process / batch_size))
  items = np.concatenate([items, -np.ones(num_batches * batch_size - len(items), np.int64)])
  return np.split(items, num_batches)


class LatentEvalData:
  """Evaluation batches over examples [0, num) of a cache (center crop, no flip), padded, masked.

  Every process yields the same number of batches (padding rows have mask False). A cache
  holds only decodable examples, so `num_skipped` is always 0.
  """

  num_skipped = 0

  def __init__(
    self,
    source: LatentSource,
    *,
    batch_size: int,
    num: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    num_workers: int | None = None,
    prefetch: int = 2,
  ):
    self.source, self.batch_size = source, batch_size
    self.num_examples = len(source) if not num else min(num, len(source))
    self._chunks = padded_chunks(self.num_examples, batch_size, process_index, process_count)
    self.num_workers, self.prefetch = parallel.resolve_workers(num_workers), prefetch

  def _read(self, chunk: np.ndarray) -> dict[str, np.ndarray]:
    mask = chunk >= 0
    latent, label = self.source.read(np.where(mask, chunk, 0))
    return {"latent": latent, "label": np.where(mask, label, 0).astype(np.int32), "mask": mask}

  def _plan(self, b: int) -> parallel.Pending:
    chunk = self._chunks[b]
    return parallel.Pending(None, [functools.partial(self._read, chunk)], lambda _, r: r[0])

  def iterator(self) -> Iterator[dict[str, np.ndarray]]:
    """The padded batches, read `prefetch` ahead on the worker threads, in order."""
    depth = max(1, self.prefetch, min(self.num_workers, len(self._chunks)))
    it = parallel.ParallelBatches(
      self._plan, 0, depth=depth, workers=self.num_workers, stop=len(self._chunks)
    )
    try:
      yield from it
    finally:
      it.close()
