"""Latent caching: encode a dataset once with a tokenizer, then train generators from the cache.

Format (one directory per cache):
  cache_info.json                              metadata, written last (see `cache_info`)
  latents-<split>.array_record-KKKKK-of-NNNNN  ArrayRecord shards (group_size 1, uncompressed)
  latents-<split>.stats-KKKKK.json             per-shard record count and float64 sums
Each record is one example: `label` int32 little-endian (4 bytes) followed by the raw z_q of the
ADM center crop and of its horizontal flip, (2, L, D) little-endian in the cache dtype (bfloat16 by
default: it halves the disk, 2 x 64 x 32 x 2 B = 8 KiB per example, ~10.5 GB for ImageNet-1k, and
the reference encodes under bf16 autocast anyway; float32 on request). ArrayRecord was chosen for
random access by global index (the exact-resume contract: a batch is a pure function of
(seed, step)) and because `array_record.python.array_record_data_source.ArrayRecordDataSource`
(what `tfds.data_sources` and grain use) reads the shards as they are; decode a record with
`decode_records`. Global example index = position in the shards concatenated in order.

Writes are atomic: everything goes to `<out>.incomplete/`, each shard is written under a temporary
name and renamed, and its stats file marks it complete (an interrupted encode resumes by skipping
complete shards); when all shards exist `cache_info.json` is written and the folder is renamed to
`<out>`. Multi-process: the shards are split contiguously over processes (each encodes its own
example range on its local devices and writes its own files, on a shared filesystem); process 0
finalizes after a barrier.

Reading: `LatentTrainData` follows the TrainData contract (`pipeline.ShuffledBatches`): batches
{"latent": float32 (B_local, L, D) raw z_q, "label": int32 (B_local,)}; sample g picks the flipped
variant when `flip_bits(seed, g)` is set. `LatentEvalData` yields fixed-shape padded batches with a
"mask". `OnlineLatentTrainData` is the fallback without a cache: it encodes the image batches
inside the iterator (same order and flips as a cache of the same source, so the same latents).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import ml_dtypes
import numpy as np
from absl import logging

from softvq_jax.data import pipeline, preprocess

INFO_FILE = "cache_info.json"
PLAN_FILE = "plan.json"
INCOMPLETE_SUFFIX = ".incomplete"
FORMAT_VERSION = 1
WRITER_OPTIONS = "group_size:1,uncompressed"
DTYPES = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16, "float32": np.float32}
CACHE_COMMAND = "python -m softvq_jax.data.cache_latents --tokenizer=... --data=... --out=..."


class IncompleteCacheError(FileNotFoundError):
  """A latent cache directory that is missing, half-written or inconsistent."""


class CacheConflictError(ValueError):
  """An interrupted encode in `<out>.incomplete` was started with different settings."""


# ----------------------------------------------------------------------------------------------
# Small helpers


def _np_dtype(name: str) -> np.dtype:
  if name not in DTYPES:
    raise ValueError(f"latent cache dtype {name!r}; choose one of {sorted(DTYPES)}")
  return np.dtype(DTYPES[name])


def shard_name(split: str, k: int, num_shards: int) -> str:
  return f"latents-{split}.array_record-{k:05d}-of-{num_shards:05d}"


def stats_name(split: str, k: int) -> str:
  return f"latents-{split}.stats-{k:05d}.json"


def _write_json_atomic(path: pathlib.Path, obj: Any) -> None:
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(obj, f, indent=2, sort_keys=True)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; caches are often shared
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


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


def encode_records(latents: np.ndarray, labels: np.ndarray) -> list[bytes]:
  """(n, 2, L, D) latents (cache dtype) + (n,) labels -> n record byte strings."""
  lat = np.ascontiguousarray(latents).reshape(len(latents), -1).view(np.uint8)
  lab = np.asarray(labels, "<i4").reshape(-1, 1).view(np.uint8)
  rows = np.concatenate([lab, lat], axis=1)
  return [r.tobytes() for r in rows]


def decode_records(
  records: Sequence[bytes], num_tokens: int, dim: int, dtype: str
) -> tuple[np.ndarray, np.ndarray]:
  """Record bytes -> latents (n, 2, L, D) in the cache dtype and labels int32 (n,)."""
  dt = _np_dtype(dtype)
  size = 4 + 2 * num_tokens * dim * dt.itemsize
  buf = np.frombuffer(b"".join(records), np.uint8)
  if buf.size != size * len(records):
    raise ValueError(f"latent records of {buf.size / max(len(records), 1)} bytes, expected {size}")
  rows = buf.reshape(len(records), size)
  labels = rows[:, :4].copy().view("<i4").reshape(-1).astype(np.int32)
  latents = rows[:, 4:].copy().view(dt.newbyteorder("<")).reshape(-1, 2, num_tokens, dim)
  return latents.astype(dt), labels


# ----------------------------------------------------------------------------------------------
# Metadata


def _incomplete_message(path: pathlib.Path) -> str:
  tmp = path.with_name(path.name + INCOMPLETE_SUFFIX)
  if tmp.is_dir():
    done = len(list(tmp.glob("latents-*.stats-*.json")))
    total = "?"
    if (tmp / PLAN_FILE).is_file():
      total = json.loads((tmp / PLAN_FILE).read_text()).get("num_shards", "?")
    return (
      f"latent cache {path} is incomplete: encoding was interrupted ({tmp} holds {done}/{total} "
      f"shards). Rerun the same cache command to resume it ({CACHE_COMMAND})"
    )
  if path.is_dir():
    return (
      f"{path} is not a complete latent cache (no {INFO_FILE}); create one with {CACHE_COMMAND}"
    )
  return f"latent cache {path} does not exist; create it with {CACHE_COMMAND}"


def cache_info(path: str | os.PathLike) -> dict:
  """Metadata of a complete cache: num_examples, num_tokens (L), dim (D), dtype, image_size,
  tokenizer, tokenizer_config, vq_mean, vq_std (scalars over every stored element), dataset,
  split, flip, shards, created; raises IncompleteCacheError naming the fix otherwise."""
  if not path:
    raise IncompleteCacheError(
      f"no latent cache path given: set --config.data.path=/path/to/cache ({CACHE_COMMAND})"
    )
  path = pathlib.Path(path)
  info_path = path / INFO_FILE
  if not info_path.is_file():
    raise IncompleteCacheError(_incomplete_message(path))
  info = json.loads(info_path.read_text())
  missing = [s["file"] for s in info["shards"] if not (path / s["file"]).is_file()]
  if missing:
    raise IncompleteCacheError(
      f"latent cache {path} lacks {len(missing)} shard file(s), e.g. {missing[0]}; re-create it "
      f"with --overwrite ({CACHE_COMMAND})"
    )
  info["path"] = str(path.absolute())
  return info


# ----------------------------------------------------------------------------------------------
# Encoding


def _plan(num_source: int, examples_per_shard: int, max_examples: int | None) -> list[list[int]]:
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


def make_encode_fn(tokenizer, dtype: str, devices: Sequence[jax.Device] | None = None):
  """uint8 images (n, S, S, 3) -> z_q (n, L, D) in `dtype`, batch split over local devices."""
  from softvq_jax.evaluation import features

  model = tokenizer.model
  np_dt = _np_dtype(dtype)

  def apply(params, images):
    x = preprocess.float_images({"image": images})["image"]  # uint8 -> [-1, 1]
    z, _ = model.apply({"params": params}, x, method=model.encode)
    return {"z": z.astype(np_dt)}

  run = features.make_feature_fn(apply, tokenizer.params, features.feature_mesh(devices))
  return lambda images: run(images)["z"]


class _ImageBatches:
  """Loads (center crop uint8 (n, S, S, 3), labels, ok-mask) for index lists on a thread pool."""

  def __init__(self, source, image_size: int):
    self.source, self.image_size = source, image_size

  def __call__(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = self.image_size
    images = np.zeros((len(indices), s, s, 3), np.uint8)
    labels = np.zeros(len(indices), np.int32)
    ok = np.ones(len(indices), bool)
    for j, i in enumerate(indices):
      try:
        image, labels[j] = self.source.load(int(i))
        images[j] = preprocess.center_crop_arr(image, s)
      except pipeline.BadImage as e:
        ok[j] = False
        logging.warning("skipping undecodable example %d: %s", i, e)
    return images, labels, ok


def _encode_shard(
  encode_fn, loader, lo, hi, batch, writer_path: pathlib.Path, np_dt, progress, workers
) -> dict:
  from array_record.python import array_record_module

  starts = list(range(lo, hi, batch))

  def load(b: int):
    return loader(range(starts[b], min(starts[b] + batch, hi))) if b < len(starts) else None

  it = pipeline.PrefetchIterator(load, 0, depth=2 * workers, workers=workers)
  writer = array_record_module.ArrayRecordWriter(str(writer_path), WRITER_OPTIONS)
  total, total_sq, count, skipped = 0.0, 0.0, 0, 0
  try:
    for _ in range(len(starts)):
      images, labels, ok = next(it)
      n = len(images)
      both = np.concatenate([images, images[:, :, ::-1]])  # (2n, S, S, 3): crop, then flip
      if n < batch:  # fixed shape: one compilation
        both = np.concatenate([both, np.zeros((2 * (batch - n),) + both.shape[1:], np.uint8)])
      z = np.asarray(encode_fn(both))[: 2 * n]
      z = np.stack([z[:n], z[n:]], axis=1)[ok]  # (n_ok, 2, L, D), already np_dt
      for rec in encode_records(z, labels[ok]):
        writer.write(rec)
      z64 = z.astype(np.float64)
      total += float(z64.sum())
      total_sq += float(np.square(z64).sum())
      count += len(z)
      skipped += int((~ok).sum())
      progress(n)
  finally:
    it.close()
    writer.close()
  return {"num_records": count, "num_skipped": skipped, "sum": total, "sum_sq": total_sq}


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


def encode_dataset(
  tokenizer,
  source,
  out: str | os.PathLike,
  *,
  tokenizer_path: str = "",
  dataset: str = "",
  split: str = "train",
  batch_size: int = 64,
  dtype: str = "bfloat16",
  examples_per_shard: int = 10_000,
  max_examples: int | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
  overwrite: bool = False,
  devices: Sequence[jax.Device] | None = None,
  num_workers: int | None = None,
) -> dict | None:
  """Encodes every example of `source` (ADM center crop and its flip) into a cache at `out`.

  tokenizer: an `PretrainedTokenizer`; source: an ImageSource. Each process (default: this
  JAX process) encodes its contiguous block of shards on its local devices; shards already
  complete in `<out>.incomplete/` are skipped (resume). Images are decoded and cropped by
  `num_workers` threads (default: the CPU count), each preparing whole batches. Returns
  `cache_info(out)` once the cache is complete (on process 0 in a multi-host run), else None
  (other processes' shards pending).
  """
  out = pathlib.Path(out).absolute()
  tmp = out.with_name(out.name + INCOMPLETE_SUFFIX)
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  if (out / INFO_FILE).is_file() and not overwrite:
    raise FileExistsError(f"latent cache {out} exists; pass --overwrite to re-create it")
  if out.exists() and not (out / INFO_FILE).is_file() and not overwrite:
    raise FileExistsError(f"{out} exists and is not a latent cache; choose another --out")
  np_dt = _np_dtype(dtype)
  model = dict(tokenizer.config["model"])
  image_size = int(model["image_size"])
  shards = _plan(len(source), examples_per_shard, max_examples)
  plan = {
    "format_version": FORMAT_VERSION,
    "num_source_examples": len(source),
    "shard_ranges": shards,
    "num_shards": len(shards),
    "dtype": dtype,
    "image_size": image_size,
    "tokenizer": str(tokenizer_path),
    "tokenizer_config": {k: tokenizer.config[k] for k in ("model", "quantizer")},
    "num_tokens": int(model["num_latent_tokens"]),
    "dim": int(model["codebook_embed_dim"]),
    "dataset": dataset,
    "split": split,
  }
  plan = json.loads(json.dumps(plan))  # as it reads back from plan.json
  if overwrite and pi == 0 and tmp.is_dir():
    old = json.loads((tmp / PLAN_FILE).read_text()) if (tmp / PLAN_FILE).is_file() else None
    if old != plan:
      shutil.rmtree(tmp)
  _barrier("latents_prepare")
  tmp.mkdir(parents=True, exist_ok=True)
  if (tmp / PLAN_FILE).is_file():
    old = json.loads((tmp / PLAN_FILE).read_text())
    if old != plan:
      diff = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
      raise CacheConflictError(
        f"{tmp} holds an interrupted encode with different settings ({', '.join(diff)}); "
        "rerun with the same settings to resume, or pass --overwrite to start over"
      )
  else:
    _write_json_atomic(tmp / PLAN_FILE, plan)

  mine = process_shards(len(shards), pi, pc)
  todo = [k for k in mine if not (tmp / stats_name(split, k)).is_file()]
  if len(todo) < len(mine):
    logging.info(
      "resuming: %d of this process's %d shards are complete", len(mine) - len(todo), len(mine)
    )
  if todo:
    encode_fn = make_encode_fn(tokenizer, dtype, devices)
    loader = _ImageBatches(source, image_size)
    workers = num_workers or min(32, os.cpu_count() or 1)
    progress = _Progress(sum(shards[k][1] - shards[k][0] for k in todo))
    for k in todo:
      lo, hi = shards[k]
      name = shard_name(split, k, len(shards))
      part = tmp / f".{name}.part"
      stats = _encode_shard(encode_fn, loader, lo, hi, batch_size, part, np_dt, progress, workers)
      os.replace(part, tmp / name)
      _write_json_atomic(tmp / stats_name(split, k), dict(stats, file=name, range=[lo, hi]))
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
  `encode_dataset`. Returns `cache_info(out)`.
  """
  out = pathlib.Path(out).absolute()
  if (out / INFO_FILE).is_file() and not overwrite:
    raise FileExistsError(f"latent cache {out} exists; pass overwrite=True to re-create it")
  latents = np.asarray(latents)
  if latents.ndim != 4 or latents.shape[1] != 2 or len(labels) != len(latents):
    raise ValueError(f"latents must be (N, 2, L, D) with N labels, got {latents.shape}")
  z = latents.astype(_np_dtype(dtype))
  tmp = out.with_name(out.name + INCOMPLETE_SUFFIX)
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  shards = _plan(len(z), examples_per_shard, None)
  cfg = tokenizer_config or {"model": {}}
  plan = {
    "format_version": FORMAT_VERSION,
    "num_source_examples": len(z),
    "shard_ranges": shards,
    "num_shards": len(shards),
    "dtype": dtype,
    "image_size": int(image_size),
    "tokenizer": str(tokenizer),
    "tokenizer_config": cfg,
    "num_tokens": int(z.shape[2]),
    "dim": int(z.shape[3]),
    "dataset": dataset,
    "split": split,
  }
  _write_json_atomic(tmp / PLAN_FILE, json.loads(json.dumps(plan)))
  from array_record.python import array_record_module

  for k, (lo, hi) in enumerate(shards):
    name = shard_name(split, k, len(shards))
    writer = array_record_module.ArrayRecordWriter(str(tmp / name), WRITER_OPTIONS)
    for rec in encode_records(z[lo:hi], np.asarray(labels)[lo:hi]):
      writer.write(rec)
    writer.close()
    z64 = z[lo:hi].astype(np.float64)
    stats = {"num_records": hi - lo, "num_skipped": 0, "file": name, "range": [lo, hi]}
    stats.update(sum=float(z64.sum()), sum_sq=float(np.square(z64).sum()))
    _write_json_atomic(tmp / stats_name(split, k), stats)
  return finalize(out, overwrite=overwrite)


def finalize(out: str | os.PathLike, *, overwrite: bool = False) -> dict | None:
  """Writes cache_info.json and renames `<out>.incomplete` to `<out>` when every shard is done.

  Returns the info, or None when shards are still missing (another process is not done).
  """
  out = pathlib.Path(out).absolute()
  tmp = out.with_name(out.name + INCOMPLETE_SUFFIX)
  plan = json.loads((tmp / PLAN_FILE).read_text())
  split, n_shards = plan["split"], plan["num_shards"]
  stats = []
  for k in range(n_shards):
    p = tmp / stats_name(split, k)
    if not p.is_file():
      logging.info("shard %d of %s is not encoded yet; the cache is finalized later", k, out)
      return None
    stats.append(json.loads(p.read_text()))
  count = sum(s["num_records"] for s in stats)
  if count == 0:
    raise ValueError(f"no decodable example was encoded into {tmp}")
  config, num_tokens, dim = plan["tokenizer_config"], plan["num_tokens"], plan["dim"]
  model = config.get("model", {})
  elements = count * 2 * num_tokens * dim
  mean = sum(s["sum"] for s in stats) / elements
  var = sum(s["sum_sq"] for s in stats) / elements - mean**2
  info = {
    "format_version": FORMAT_VERSION,
    "num_examples": count,
    "num_skipped": sum(s["num_skipped"] for s in stats),
    "num_tokens": num_tokens,
    "dim": dim,
    "dtype": plan["dtype"],
    "image_size": plan["image_size"],
    "tokenizer": plan["tokenizer"],
    "tokenizer_config": config,
    "tokenizer_vq_mean": float(model.get("vq_mean", 0.0)),
    "tokenizer_vq_std": float(model.get("vq_std", 1.0)),
    "vq_mean": float(mean),
    "vq_std": float(math.sqrt(max(var, 0.0))),
    "dataset": plan["dataset"],
    "split": split,
    "flip": True,
    "crop": "adm_center",
    "record_format": "label int32 LE (4 B) + z_q (2, L, D) LE [center crop, horizontal flip]",
    "writer_options": WRITER_OPTIONS,
    "shards": [
      {"file": s["file"], "num_records": s["num_records"], "range": s["range"]} for s in stats
    ],
    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
  }
  _write_json_atomic(tmp / INFO_FILE, info)
  if out.exists():
    if not overwrite:
      raise FileExistsError(f"latent cache {out} exists; pass --overwrite to re-create it")
    backup = out.with_name(f".{out.name}.old")
    shutil.rmtree(backup, ignore_errors=True)
    out.rename(backup)
    tmp.rename(out)
    shutil.rmtree(backup, ignore_errors=True)
  else:
    tmp.rename(out)
  logging.info("latent cache complete: %s", out)
  return cache_info(out)


# ----------------------------------------------------------------------------------------------
# Reading


class LatentSource:
  """Random access to a complete cache: `read(indices, flips)` -> (float32 (n, L, D), labels)."""

  def __init__(self, path: str | os.PathLike):
    from array_record.python.array_record_data_source import ArrayRecordDataSource

    self.info = cache_info(path)
    root = pathlib.Path(self.info["path"])
    files = [str(root / s["file"]) for s in self.info["shards"]]
    self._ds = ArrayRecordDataSource(files)
    if len(self._ds) != self.info["num_examples"]:
      raise IncompleteCacheError(
        f"latent cache {root} holds {len(self._ds)} records but {INFO_FILE} says "
        f"{self.info['num_examples']}; re-create it with --overwrite ({CACHE_COMMAND})"
      )
    self.num_tokens, self.dim, self.dtype = (
      self.info["num_tokens"],
      self.info["dim"],
      self.info["dtype"],
    )

  def __len__(self) -> int:
    return self.info["num_examples"]

  def read_both(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Examples -> latents (n, 2, L, D) in the cache dtype (variant 1 = flip), labels (n,)."""
    records = self._ds.__getitems__([int(i) for i in indices])
    return decode_records(records, self.num_tokens, self.dim, self.dtype)

  def read(self, indices: Sequence[int], flips: np.ndarray | None = None):
    """Examples -> float32 latents (n, L, D) (flipped variant where `flips`), int32 labels."""
    both, labels = self.read_both(indices)
    variant = np.zeros(len(both), np.int64) if flips is None else np.asarray(flips, np.int64)
    return both[np.arange(len(both)), variant].astype(np.float32), labels


class LatentTrainData(pipeline.ShuffledBatches):
  """TrainData contract over a latent cache: {"latent": float32 (B_local, L, D), "label"}."""

  def __init__(
    self,
    source: LatentSource,
    *,
    global_batch: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    random_flip: bool = True,
    num_workers: int = 2,
    prefetch: int = 2,
  ):
    super().__init__(
      len(source),
      global_batch=global_batch,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
      num_workers=num_workers,
      prefetch=prefetch,
    )
    self.source, self.random_flip = source, random_flip
    self.info = source.info

  def flips(self, samples: np.ndarray) -> np.ndarray:
    if not self.random_flip:
      return np.zeros(len(samples), bool)
    return flip_bits(self.seed, samples)

  def batch(self, step: int) -> dict[str, np.ndarray]:
    g = self.local_samples(step)
    latent, label = self.source.read(self.example_indices(g), self.flips(g))
    return {"latent": latent, "label": label}


def _padded(n: int, batch_size: int, process_index: int, process_count: int) -> list[np.ndarray]:
  """Strided per-process eval items, padded with -1 to the same number of batches everywhere."""
  items = np.arange(n)[process_index::process_count]
  per_process = math.ceil(n / process_count)
  num_batches = max(1, math.ceil(per_process / batch_size))
  items = np.concatenate([items, -np.ones(num_batches * batch_size - len(items), np.int64)])
  return np.split(items, num_batches)


class LatentEvalData:
  """Evaluation batches over examples [0, num) of a cache (center crop, no flip), padded, masked.

  Every process yields the same number of batches (padding rows have mask False).
  """

  def __init__(
    self,
    source: LatentSource,
    *,
    batch_size: int,
    num: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
  ):
    self.source, self.batch_size = source, batch_size
    self.num_examples = len(source) if not num else min(num, len(source))
    self._chunks = _padded(self.num_examples, batch_size, process_index, process_count)

  def iterator(self) -> Iterator[dict[str, np.ndarray]]:
    for chunk in self._chunks:
      mask = chunk >= 0
      latent, label = self.source.read(np.where(mask, chunk, 0))
      yield {"latent": latent, "label": np.where(mask, label, 0).astype(np.int32), "mask": mask}


# ----------------------------------------------------------------------------------------------
# Encoding on the fly (the fallback without a cache)


class OnlineLatentTrainData(pipeline.ShuffledBatches):
  """The TrainData contract by encoding image batches inside the iterator.

  Same example order and flip per sample as `LatentTrainData` over a cache of the same source, so
  both yield the same latents (up to the cache dtype). Image loading runs on the prefetch threads,
  encoding (over this process's devices) in the consuming thread.
  """

  def __init__(
    self,
    source,
    tokenizer,
    *,
    global_batch: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    random_flip: bool = True,
    num_workers: int = 4,
    prefetch: int = 2,
    devices: Sequence[jax.Device] | None = None,
  ):
    super().__init__(
      len(source),
      global_batch=global_batch,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
      num_workers=num_workers,
      prefetch=prefetch,
    )
    self.source, self.tokenizer, self.random_flip = source, tokenizer, random_flip
    self.image_size = int(tokenizer.config["model"]["image_size"])
    self._loader = _ImageBatches(source, self.image_size)
    self._devices = devices
    self._encode = None

  def images(self, step: int) -> dict[str, np.ndarray]:
    """uint8 (B_local, S, S, 3) center crops, flipped per `flip_bits`, and labels."""
    g = self.local_samples(step)
    images, labels, ok = self._loader(self.example_indices(g))
    if not ok.all():
      raise pipeline.BadImage(
        f"undecodable example(s) in step {step}; the latent cache skips them, encoding on the "
        "fly cannot (fix or remove the files)"
      )
    if self.random_flip:
      flip = flip_bits(self.seed, g)
      images[flip] = images[flip][:, :, ::-1]
    return {"image": images, "label": labels}

  def encode(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if self._encode is None:
      self._encode = make_encode_fn(self.tokenizer, "float32", self._devices)
    return {"latent": np.asarray(self._encode(batch["image"]), np.float32), "label": batch["label"]}

  def batch(self, step: int) -> dict[str, np.ndarray]:
    return self.encode(self.images(step))

  def iterator(self, start_step: int = 0):
    it = pipeline.PrefetchIterator(self.images, start_step, self.prefetch, self.num_workers)
    return _MapIterator(it, self.encode)


class _MapIterator:
  """fn over an iterator, with close() passed through."""

  def __init__(self, it, fn):
    self._it, self._fn = it, fn

  def __iter__(self):
    return self

  def __next__(self):
    return self._fn(next(self._it))

  def close(self) -> None:
    self._it.close()


class OnlineLatentEvalData:
  """Eval batches of an image source encoded on the fly (center crop, no flip), padded, masked."""

  def __init__(
    self,
    source,
    tokenizer,
    *,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    devices: Sequence[jax.Device] | None = None,
  ):
    self.source, self.tokenizer, self.batch_size = source, tokenizer, batch_size
    self.num_examples = len(source)
    self._loader = _ImageBatches(source, int(tokenizer.config["model"]["image_size"]))
    self._chunks = _padded(len(source), batch_size, process_index, process_count)
    self._devices = devices
    self._encode = None

  def iterator(self) -> Iterator[dict[str, np.ndarray]]:
    if self._encode is None:  # built once: repeated evaluations reuse the compiled function
      self._encode = make_encode_fn(self.tokenizer, "float32", self._devices)
    encode = self._encode
    for chunk in self._chunks:
      mask = chunk >= 0
      images, labels, ok = self._loader(np.where(mask, chunk, 0))
      mask &= ok
      yield {
        "latent": np.asarray(encode(images), np.float32),
        "label": np.where(mask, labels, 0).astype(np.int32),
        "mask": mask,
      }
