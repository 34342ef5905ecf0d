"""Writing latent caches: multi-process, resumable and atomic (the format is format.py).

Everything goes to `<out>.incomplete/`: each shard is written under a temporary name and renamed,
and its stats file marks it complete (an interrupted encode resumes by skipping complete shards);
when all shards exist `cache_info.json` is written and the folder is renamed to `<out>` (on
`gs://`, where folders cannot be renamed, its files are moved one by one, cache_info.json last).
Multi-process: the shards are split contiguously over processes (each encodes its own example
range on its local devices and writes its own files, on a shared filesystem); process 0 finalizes
after a barrier.

No model code here: `encode_dataset` takes `encode_fn`, uint8 images (n, S, S, 3) -> z_q
(n, L, D), built by the caller (`softvq_jax.training.online_latents.make_encode_fn` for a
tokenizer). `write_cache` writes latents already in memory.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import jax
import numpy as np
from absl import logging
from etils import epath

from softvq_jax.data import parallel, pipeline, preprocess
from softvq_jax.data.latents import format as fmt
from softvq_jax.data.skips import SkipLog
from softvq_jax.utils.files import replace_dir
from softvq_jax.utils.paths import user_path

EncodeFn = Callable[[np.ndarray], np.ndarray]  # uint8 (n, S, S, 3) -> z_q (n, L, D)


def shard_ranges(
  num_source: int, examples_per_shard: int, max_examples: int | None = None
) -> list[list[int]]:
  """[lo, hi) example ranges of the shards: the first `max_examples` examples, evenly split."""
  n = num_source if max_examples is None else min(num_source, max_examples)
  if n == 0:
    raise ValueError("the dataset to encode is empty")
  k = max(1, math.ceil(n / examples_per_shard))
  return [[i * n // k, (i + 1) * n // k] for i in range(k)]


def process_shards(num_shards: int, process_index: int, process_count: int) -> range:
  """The contiguous block of shard numbers that process `process_index` encodes."""
  return range(
    process_index * num_shards // process_count, (process_index + 1) * num_shards // process_count
  )


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


class CenterCrops:
  """Loads (center crop uint8 (n, S, S, 3), labels int32, ok-mask) of an ImageSource's indices.

  Undecodable examples (`pipeline.BadImage`) are zeros with ok False (warned about once per
  file per run, `skips`). `plan(indices)` splits the work into one task per example for
  `parallel.ParallelBatches`; calling the object runs the same tasks serially.
  """

  def __init__(self, source, image_size: int):
    self.source, self.image_size = source, image_size
    self.skips = SkipLog("example")

  def fill(self, out: tuple[np.ndarray, np.ndarray, np.ndarray], j: int, index: int) -> None:
    """Row j of `out` (images, labels, ok) from example `index`."""
    images, labels, ok = out
    try:
      if self.skips.is_bad(index):
        raise pipeline.BadImage(self.skips.bad.get(index, ""))
      image, labels[j] = self.source.load(index)
      images[j] = preprocess.center_crop_arr(image, self.image_size)
    except pipeline.BadImage as e:
      ok[j] = False
      self.skips.record(index, e)

  def plan(self, indices: Sequence[int]) -> parallel.Pending:
    s = self.image_size
    out = (
      np.zeros((len(indices), s, s, 3), np.uint8),
      np.zeros(len(indices), np.int32),
      np.ones(len(indices), bool),
    )
    tasks = [functools.partial(self.fill, out, j, int(i)) for j, i in enumerate(indices)]
    return parallel.Pending(out, tasks)

  def __call__(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return parallel.run_serially(self.plan(indices))


class _Progress:
  def __init__(self, total: int, every_s: float = 10.0):
    self.total, self.done, self.every_s = total, 0, every_s
    self.t0 = self.last = time.time()

  def __call__(self, n: int) -> None:
    self.done += n
    now = time.time()
    if now - self.last >= self.every_s or self.done >= self.total:
      self.last = now
      rate = self.done / max(now - self.t0, 1e-9)
      eta = (self.total - self.done) / max(rate, 1e-9)
      logging.info(
        "encoded %d/%d images (%.1f images/s, ETA %s)",
        self.done,
        self.total,
        rate,
        time.strftime("%H:%M:%S", time.gmtime(eta)),
      )


Chunk = tuple[np.ndarray, np.ndarray, int]  # z (n, 2, L, D) in the cache dtype, labels, skipped


def _write_shard(tmp: epath.Path, plan: dict, k: int, chunks: Iterable[Chunk]) -> None:
  """Shard k of `plan` from its chunks: records + float64 stats; complete once its stats exist."""
  from array_record.python import array_record_module

  split, lo, hi = plan["split"], *plan["shard_ranges"][k]
  name = fmt.shard_name(split, k, plan["num_shards"])
  part = tmp / f".{name}.part"
  writer = array_record_module.ArrayRecordWriter(str(part), fmt.WRITER_OPTIONS)
  total, total_sq, count, skipped = 0.0, 0.0, 0, 0
  try:
    for z, labels, n_skipped in chunks:
      for rec in fmt.encode_records(z, labels):
        writer.write(rec)
      z64 = z.astype(np.float64)
      total += float(z64.sum())
      total_sq += float(np.square(z64).sum())
      count += len(z)
      skipped += n_skipped
  finally:
    getattr(chunks, "close", lambda: None)()
    writer.close()
  part.replace(tmp / name)
  stats = {"num_records": count, "num_skipped": skipped, "sum": total, "sum_sq": total_sq}
  fmt.write_json_atomic(tmp / fmt.stats_name(split, k), dict(stats, file=name, range=[lo, hi]))


def _encoded_chunks(
  encode_fn: EncodeFn, loader: CenterCrops, lo: int, hi: int, batch: int, np_dt, progress, workers
) -> Iterator[Chunk]:
  """Batches of [lo, hi): the examples loaded on `workers` threads (in order, 2 batches ahead),
  crop and flip encoded together."""
  starts = list(range(lo, hi, batch))

  def plan(b: int) -> parallel.Pending:
    return loader.plan(range(starts[b], min(starts[b] + batch, hi)))

  depth = parallel.batch_depth(2, workers, batch)
  it = parallel.ParallelBatches(plan, 0, depth=depth, workers=workers, stop=len(starts))
  try:
    for _ in range(len(starts)):
      images, labels, ok = next(it)
      n = len(images)
      both = np.concatenate([images, images[:, :, ::-1]])  # (2n, S, S, 3): crop, then flip
      if n < batch:  # fixed shape: one compilation
        both = np.concatenate([both, np.zeros((2 * (batch - n),) + both.shape[1:], np.uint8)])
      z = np.asarray(encode_fn(both))[: 2 * n].astype(np_dt, copy=False)
      yield np.stack([z[:n], z[n:]], axis=1)[ok], labels[ok], int((~ok).sum())
      progress(n)
  finally:
    it.close()


def _start(tmp: epath.Path, plan: dict, *, process_index: int, overwrite: bool) -> None:
  """Creates `tmp` with plan.json, or checks that the interrupted encode there has the same plan."""
  if overwrite and process_index == 0 and tmp.is_dir():
    old = fmt.read_json(tmp / fmt.PLAN_FILE) if (tmp / fmt.PLAN_FILE).is_file() else None
    if old != plan:
      tmp.rmtree()
  _barrier("latents_prepare")
  tmp.mkdir(parents=True, exist_ok=True)
  if (tmp / fmt.PLAN_FILE).is_file():
    old = fmt.read_json(tmp / fmt.PLAN_FILE)
    if old != plan:
      diff = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
      raise fmt.CacheConflictError(
        f"{tmp} holds an interrupted encode with different settings ({', '.join(diff)}); "
        "rerun with the same settings to resume, or pass --overwrite to start over"
      )
  else:
    fmt.write_json_atomic(tmp / fmt.PLAN_FILE, plan)


def encode_dataset(
  encode_fn: EncodeFn,
  source,
  out: str | os.PathLike,
  *,
  image_size: int,
  num_tokens: int,
  dim: int,
  tokenizer: str = "",
  tokenizer_config: dict | None = None,
  dataset: str = "",
  split: str = "train",
  batch_size: int = 64,
  dtype: str = "bfloat16",
  examples_per_shard: int = 10_000,
  max_examples: int | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
  overwrite: bool = False,
  num_workers: int | None = None,
) -> dict | None:
  """Encodes every example of `source` (ADM center crop and its flip) into a cache at `out`.

  encode_fn: uint8 (2 * batch_size, image_size, image_size, 3) -> z_q (n, num_tokens, dim), cast
  to `dtype` on the host if it is not already; source: an ImageSource. `tokenizer` (a path) and
  `tokenizer_config` are recorded in the metadata. Each process (default: this JAX process)
  encodes its contiguous block of shards; shards already complete in `<out>.incomplete/` are
  skipped (resume). Images are decoded and cropped example by example on `num_workers` threads
  (default: this process's cores), in order. Returns `cache_info(out)` once the cache is
  complete (on process 0 in a multi-host run), else None (other processes' shards pending).
  """
  out = user_path(out)
  tmp = fmt.incomplete_dir(out)
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  if (out / fmt.INFO_FILE).is_file() and not overwrite:
    raise FileExistsError(f"latent cache {out} exists; pass --overwrite to re-create it")
  if out.exists() and not (out / fmt.INFO_FILE).is_file() and not overwrite:
    raise FileExistsError(f"{out} exists and is not a latent cache; choose another --out")
  np_dt = fmt.np_dtype(dtype)
  shards = shard_ranges(len(source), examples_per_shard, max_examples)
  plan = fmt.plan(
    num_source=len(source),
    shards=shards,
    dtype=dtype,
    image_size=image_size,
    tokenizer=tokenizer,
    tokenizer_config=tokenizer_config or {"model": {}},
    num_tokens=num_tokens,
    dim=dim,
    dataset=dataset,
    split=split,
  )
  _start(tmp, plan, process_index=pi, overwrite=overwrite)

  mine = process_shards(len(shards), pi, pc)
  todo = [k for k in mine if not (tmp / fmt.stats_name(split, k)).is_file()]
  if len(todo) < len(mine):
    logging.info(
      "resuming: %d of this process's %d shards are complete", len(mine) - len(todo), len(mine)
    )
  loader = CenterCrops(source, int(image_size))
  workers = parallel.resolve_workers(num_workers)
  progress = _Progress(sum(shards[k][1] - shards[k][0] for k in todo))
  for k in todo:
    lo, hi = shards[k]
    chunks = _encoded_chunks(encode_fn, loader, lo, hi, batch_size, np_dt, progress, workers)
    _write_shard(tmp, plan, k, chunks)
  _barrier("latents_encoded")
  if jax.process_count() > 1 and jax.process_index() != 0:
    return None
  return finalize(out, overwrite=overwrite)


def write_cache(
  out: str | os.PathLike,
  latents: np.ndarray,
  labels: np.ndarray,
  *,
  dtype: str = "float32",
  image_size: int = 0,
  tokenizer: str = "",
  tokenizer_config: dict | None = None,
  dataset: str = "arrays",
  split: str = "train",
  examples_per_shard: int = 10_000,
  overwrite: bool = False,
) -> dict:
  """A complete cache from in-memory latents (N, 2, L, D) [crop, flip] and labels (N,).

  For tests and tools that already hold latents (no tokenizer needed); same format as
  `encode_dataset` (always starts afresh, single process). Returns `cache_info(out)`.
  """
  out = user_path(out)
  if (out / fmt.INFO_FILE).is_file() and not overwrite:
    raise FileExistsError(f"latent cache {out} exists; pass overwrite=True to re-create it")
  latents = np.asarray(latents)
  if latents.ndim != 4 or latents.shape[1] != 2 or len(labels) != len(latents):
    raise ValueError(f"latents must be (N, 2, L, D) with N labels, got {latents.shape}")
  z = latents.astype(fmt.np_dtype(dtype))
  labels = np.asarray(labels)
  tmp = fmt.incomplete_dir(out)
  tmp.rmtree(missing_ok=True)
  shards = shard_ranges(len(z), examples_per_shard)
  plan = fmt.plan(
    num_source=len(z),
    shards=shards,
    dtype=dtype,
    image_size=image_size,
    tokenizer=tokenizer,
    tokenizer_config=tokenizer_config or {"model": {}},
    num_tokens=z.shape[2],
    dim=z.shape[3],
    dataset=dataset,
    split=split,
  )
  tmp.mkdir(parents=True)
  fmt.write_json_atomic(tmp / fmt.PLAN_FILE, plan)
  for k, (lo, hi) in enumerate(shards):
    _write_shard(tmp, plan, k, [(z[lo:hi], labels[lo:hi], 0)])
  return finalize(out, overwrite=overwrite)


def finalize(out: str | os.PathLike, *, overwrite: bool = False) -> dict | None:
  """Writes cache_info.json and renames `<out>.incomplete` to `<out>` when every shard is done.

  Returns the info, or None when shards are still missing (another process is not done).
  """
  out = user_path(out)
  tmp = fmt.incomplete_dir(out)
  plan = fmt.read_json(tmp / fmt.PLAN_FILE)
  stats = []
  for k in range(plan["num_shards"]):
    p = tmp / fmt.stats_name(plan["split"], k)
    if not p.is_file():
      logging.info("shard %d of %s is not encoded yet; the cache is finalized later", k, out)
      return None
    stats.append(fmt.read_json(p))
  if sum(s["num_records"] for s in stats) == 0:
    raise ValueError(f"no decodable example was encoded into {tmp}")
  fmt.write_json_atomic(tmp / fmt.INFO_FILE, fmt.info_from(plan, stats))
  if out.exists() and not overwrite:
    raise FileExistsError(f"latent cache {out} exists; pass --overwrite to re-create it")
  # Local: folder renames (an old cache via a backup name); gs://: file by file,
  # cache_info.json last, so a reader never takes a half-moved cache for a complete one.
  replace_dir(tmp, out, last=fmt.INFO_FILE)
  logging.info("latent cache complete: %s", out)
  return fmt.cache_info(out)
