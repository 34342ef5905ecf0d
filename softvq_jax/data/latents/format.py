"""The latent cache format: record bytes, dtypes, file names and the metadata files.

One directory per cache:
  cache_info.json                              metadata, written last (see `cache_info`)
  latents-<split>.array_record-KKKKK-of-NNNNN  ArrayRecord shards (group_size 1, uncompressed)
  latents-<split>.stats-KKKKK.json             per-shard record count and float64 sums
  plan.json                                    the settings of the encode (see `plan`)
Each record is one example: `label` int32 little-endian (4 bytes) followed by the raw z_q of the
ADM center crop and of its horizontal flip, (2, L, D) little-endian in the cache dtype (bfloat16 by
default: it halves the disk, 2 x 64 x 32 x 2 B = 8 KiB per example, ~10.5 GB for ImageNet-1k, and
the reference encodes under bf16 autocast anyway; float32 on request). ArrayRecord was chosen for
random access by global index (the exact-resume contract: a batch is a pure function of
(seed, step)) and because `array_record.python.array_record_data_source.ArrayRecordDataSource`
(what `tfds.data_sources` and grain use) reads the shards as they are; decode a record with
`decode_records`. Global example index = position in the shards concatenated in order. A cache
may live locally or on `gs://` (paths through `etils.epath`; ArrayRecord reads and writes both).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import ml_dtypes
import numpy as np
from etils import epath

from softvq_jax.utils.files import atomic_open
from softvq_jax.utils.paths import user_path

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


def np_dtype(name: str) -> np.dtype:
  """The numpy dtype of a cache dtype name (bfloat16 | float16 | float32)."""
  if name not in DTYPES:
    raise ValueError(f"latent cache dtype {name!r}; choose one of {sorted(DTYPES)}")
  return np.dtype(DTYPES[name])


def shard_name(split: str, k: int, num_shards: int) -> str:
  return f"latents-{split}.array_record-{k:05d}-of-{num_shards:05d}"


def stats_name(split: str, k: int) -> str:
  return f"latents-{split}.stats-{k:05d}.json"


def incomplete_dir(out: epath.Path) -> epath.Path:
  """Where a cache is written before it is complete: `<out>.incomplete`."""
  return out.with_name(out.name + INCOMPLETE_SUFFIX)


def read_json(path: epath.Path) -> Any:
  return json.loads(path.read_text())


def write_json_atomic(path: epath.Path, obj: Any) -> None:
  """json (indented, sorted keys) that appears whole (utils.files.atomic_open: local or gs://)."""
  with atomic_open(path, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)


# ----------------------------------------------------------------------------------------------
# Records


def encode_records(latents: np.ndarray, labels: np.ndarray) -> list[bytes]:
  """(n, 2, L, D) latents (cache dtype) + (n,) labels -> n record byte strings."""
  lat = np.ascontiguousarray(latents).reshape(len(latents), -1).view(np.uint8)
  lab = np.asarray(labels, "<i4").reshape(-1, 1).view(np.uint8)
  rows = np.concatenate([lab, lat], axis=1)
  return [r.tobytes() for r in rows]


def _views(records: Sequence[bytes], num_tokens: int, dim: int, dtype: str):
  """Zero-copy views of the joined records: labels (n,) '<i4', latents (n, 2, L, D) '<dtype'."""
  dt = np_dtype(dtype)
  size = 4 + 2 * num_tokens * dim * dt.itemsize
  buf = np.frombuffer(b"".join(records), np.uint8)
  if buf.size != size * len(records):
    raise ValueError(f"latent records of {buf.size / max(len(records), 1)} bytes, expected {size}")
  rows = buf.reshape(len(records), size)
  labels = rows[:, :4].view("<i4").reshape(-1)
  latents = rows[:, 4:].view(dt.newbyteorder("<")).reshape(-1, 2, num_tokens, dim)
  return labels, latents


def decode_records(
  records: Sequence[bytes], num_tokens: int, dim: int, dtype: str
) -> tuple[np.ndarray, np.ndarray]:
  """Record bytes -> latents (n, 2, L, D) in the cache dtype and labels int32 (n,)."""
  labels, latents = _views(records, num_tokens, dim, dtype)
  return latents.astype(np_dtype(dtype)), labels.astype(np.int32)


def decode_variants(
  records: Sequence[bytes], num_tokens: int, dim: int, dtype: str, flips: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
  """Record bytes -> float32 latents (n, L, D), the flipped variant where `flips`, int32 labels.

  Selects from a view of the record bytes: one copy in the cache dtype, one cast to float32
  (measured faster than a masked cast straight into the float32 batch).
  """
  labels, latents = _views(records, num_tokens, dim, dtype)
  variant = np.zeros(len(latents), np.int64) if flips is None else np.asarray(flips, np.int64)
  return latents[np.arange(len(latents)), variant].astype(np.float32), labels.astype(np.int32)


# ----------------------------------------------------------------------------------------------
# Metadata


def plan(
  *,
  num_source: int,
  shards: list[list[int]],
  dtype: str,
  image_size: int,
  tokenizer: str,
  tokenizer_config: dict,
  num_tokens: int,
  dim: int,
  dataset: str,
  split: str,
) -> dict:
  """The settings of an encode (plan.json), as it reads back from the file."""
  out = {
    "format_version": FORMAT_VERSION,
    "num_source_examples": int(num_source),
    "shard_ranges": shards,
    "num_shards": len(shards),
    "dtype": dtype,
    "image_size": int(image_size),
    "tokenizer": str(tokenizer),
    "tokenizer_config": tokenizer_config,
    "num_tokens": int(num_tokens),
    "dim": int(dim),
    "dataset": dataset,
    "split": split,
  }
  return json.loads(json.dumps(out))


def info_from(plan: dict, stats: list[dict]) -> dict:
  """cache_info.json from the plan and every shard's stats (count, float64 sum, sum of squares)."""
  count = sum(s["num_records"] for s in stats)
  config, num_tokens, dim = plan["tokenizer_config"], plan["num_tokens"], plan["dim"]
  model = config.get("model", {})
  elements = count * 2 * num_tokens * dim
  mean = sum(s["sum"] for s in stats) / elements
  var = sum(s["sum_sq"] for s in stats) / elements - mean**2
  return {
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
    "split": plan["split"],
    "flip": True,
    "crop": "adm_center",
    "record_format": "label int32 LE (4 B) + z_q (2, L, D) LE [center crop, horizontal flip]",
    "writer_options": WRITER_OPTIONS,
    "shards": [
      {"file": s["file"], "num_records": s["num_records"], "range": s["range"]} for s in stats
    ],
    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
  }


def _incomplete_message(path: epath.Path) -> str:
  tmp = incomplete_dir(path)
  if tmp.is_dir():
    done = len(list(tmp.glob("latents-*.stats-*.json")))
    total = "?"
    if (tmp / PLAN_FILE).is_file():
      total = read_json(tmp / PLAN_FILE).get("num_shards", "?")
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
  path = user_path(path)  # absolute, or a gs:// URI as it is
  info_path = path / INFO_FILE
  if not info_path.is_file():
    raise IncompleteCacheError(_incomplete_message(path))
  info = read_json(info_path)
  missing = [s["file"] for s in info["shards"] if not (path / s["file"]).is_file()]
  if missing:
    raise IncompleteCacheError(
      f"latent cache {path} lacks {len(missing)} shard file(s), e.g. {missing[0]}; re-create it "
      f"with --overwrite ({CACHE_COMMAND})"
    )
  info["path"] = str(path)
  return info
